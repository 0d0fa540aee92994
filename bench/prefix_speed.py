"""Frozen-prefix caching (issue #17): the linearized classifier on `faces` before and after, vs fine-tuning.

One run, one thread, interleaved rounds (every variant once per round; medians), so the ratios are
measured under the same load. Every timed repeat of the cached engine starts from an empty feature
cache (``prefix.clear_cache()``), so no timed call is answered by a previous repeat's cache.

faces (MobileNetV2 body, head of 2,562 parameters linearized; the split of bench/adaptation.py: 40
images per class to adapt, 120 to test):

* classifier, grid: the evidence search the old ``core/compare.py::_best_evidence`` did (a classifier at
  s² = 1, then one fresh Cholesky classifier per s² in PRIOR_VAR_GRID: 8 fits), then the winner's
  test probabilities. ``before`` builds every LinearizedModel inside ``prefix.disabled()``.
* classifier, engine search: ``LinearizedClassifier(...).fit(X, y).fit_hyperparameters(selection=
  "evidence")`` (the same grid, one LinearizedModel), then test probabilities.
* fine-tuning the same head (Adam, lr 1e-3, batch 32, 100 epochs, no early stopping, float32): the
  training run is timed alone; test accuracy per epoch comes from a second identical seeded run, and
  epoch e is placed at e/E of the timed run (as in bench/adaptation.py). Its time to its final
  accuracy is the first epoch whose test accuracy reaches the last epoch's; the fine-tuned model's
  test prediction is timed separately.

sine / hprice3 (MLPs, params='last:1'): LinearizedGP fit + marginal-likelihood fit of s² and σ² + test
predictive variances, before and after.

    .venv/bin/python bench/prefix_speed.py [--rounds 2] [--mlp-rounds 7] [--out bench/results/prefix_speed.json]
"""

from __future__ import annotations

import argparse
import inspect
import json
import math
import platform
import statistics
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from adaptation import SEED, Case, _split  # noqa: E402  (the same splits as benchmark 4)

from ntk_studio.core import FineTuneSettings, LinearizedClassifier, LinearizedGP, finetune, finetune_iter  # noqa: E402
from ntk_studio.core import prefix  # noqa: E402
from ntk_studio.core.examples.registry import load_example  # noqa: E402
from ntk_studio.core.finetune import predict  # noqa: E402
from ntk_studio.core.hyper import PRIOR_VAR_GRID  # noqa: E402
from ntk_studio.core.metrics_regression import rmse  # noqa: E402
from ntk_studio.core.metrics_classification import accuracy  # noqa: E402

FACES = Case("faces", per_class=40, params="head", epochs=100)
MLPS = (Case("sine", n_adapt=10, params="last:1"), Case("hprice3", n_adapt=40, params="last:1", lr=3e-3))


def _grid_search(model, train, test, params: str, dtype: torch.dtype = torch.float64) -> dict:
    """compare._best_evidence's loop (fresh classifiers), then the winner's test probabilities."""
    start = time.perf_counter()
    opts = {"params": params, "dtype": dtype, "best_effort": dtype != torch.float64}
    best = LinearizedClassifier(model, prior_var=1.0, **opts).fit(train.X, train.y)
    best_lml = best.log_marginal_likelihood()
    for prior_var in PRIOR_VAR_GRID:
        cand = LinearizedClassifier(model, prior_var=prior_var, solver="cholesky", **opts).fit(train.X, train.y)
        lml = cand.log_marginal_likelihood()
        if lml > best_lml:
            best, best_lml = cand, lml
    fitted = time.perf_counter()
    probs = best.predict_proba(test.X)
    end = time.perf_counter()
    return {"seconds": end - start, "fit_seconds": fitted - start, "predict_seconds": end - fitted,
            "accuracy": accuracy(probs, test.y), "prior_var": best.prior_var, "note": best.lm.prefix_note}


def _engine_search(model, train, test, params: str) -> dict:
    """LinearizedClassifier.fit_hyperparameters (the same grid on one LinearizedModel), then predictions."""
    start = time.perf_counter()
    clf = LinearizedClassifier(model, params=params, prior_var=1.0).fit(train.X, train.y)
    # The Laplace-evidence grid (newer engines default to a held-out selection; ask for the evidence).
    takes_selection = "selection" in inspect.signature(clf.fit_hyperparameters).parameters
    clf.fit_hyperparameters(**({"selection": "evidence"} if takes_selection else {}))
    fitted = time.perf_counter()
    probs = clf.predict_proba(test.X)
    end = time.perf_counter()
    return {"seconds": end - start, "fit_seconds": fitted - start, "predict_seconds": end - fitted,
            "accuracy": accuracy(probs, test.y), "prior_var": clf.prior_var, "note": clf.lm.prefix_note,
            "selection": clf.hyper_info.get("selection", "evidence")}


def _variant(fn, cached: bool):
    def run(*args):
        prefix.clear_cache()  # never time a call answered by an earlier repeat
        if cached:
            return fn(*args)
        with prefix.disabled():
            return fn(*args)

    return run


def _median_runs(ops: dict, args: tuple, rounds: int, log) -> dict:
    runs: dict[str, list[dict]] = {k: [] for k in ops}
    for r in range(rounds):
        for name, op in ops.items():
            runs[name].append(op(*args))
            log(f"  round {r + 1}/{rounds} {name}: {runs[name][-1]['seconds']:.3f} s")
    out = {}
    for name, rs in runs.items():
        med = {k: statistics.median(x[k] for x in rs) for k in ("seconds", "fit_seconds", "predict_seconds") if k in rs[0]}
        out[name] = {**rs[-1], **med, "all_seconds": [x["seconds"] for x in rs]}
    return out


def _finetune(model, train, test, case: Case) -> dict:
    s = FineTuneSettings(params=case.params, lr=case.lr, epochs=case.epochs, patience=None, seed=SEED,
                         task="classification")
    start = time.perf_counter()
    ft = finetune(model, train, None, s)
    train_s = time.perf_counter() - start
    start = time.perf_counter()
    final_probs = predict(ft, test.X)
    predict_s = time.perf_counter() - start
    acc = [ev.val_metrics["accuracy"] for ev in finetune_iter(model, train, test, s)]
    times = [train_s * e / case.epochs for e in range(case.epochs + 1)]
    final = acc[-1]
    to_final = next(t for t, a in zip(times, acc) if a >= final)
    return {"seconds": train_s, "predict_seconds": predict_s, "final_accuracy": final,
            "final_accuracy_check": accuracy(final_probs, test.y), "time_to_final": to_final,
            "epoch_of_final": times.index(to_final), "times": times, "accuracy": acc}


def run_faces(rounds: int, log) -> dict:
    torch.manual_seed(SEED)
    ex = load_example("faces")
    train, test = _split(ex.target, FACES)
    # Untimed warm-up: the first torch.func call in a process imports ~1.5 s of machinery.
    LinearizedClassifier(ex.model, params=FACES.params).fit(train.X[:2], train.y[:2])
    ops = {
        "grid, before": _variant(_grid_search, cached=False),
        "grid, after": _variant(_grid_search, cached=True),
        "engine search, before": _variant(_engine_search, cached=False),
        "engine search, after": _variant(_engine_search, cached=True),
        # Not the float64 engine: shows what the body's precision costs (Newton may stop short: best_effort).
        "grid, after, float32 engine": _variant(lambda *a: _grid_search(*a, dtype=torch.float32), cached=True),
    }
    clf = _median_runs(ops, (ex.model, train, test, FACES.params), rounds, log)
    ft = _finetune(ex.model, train, test, FACES)
    log(f"  fine-tuning: {ft['seconds']:.2f} s for {FACES.epochs} epochs, final accuracy {ft['final_accuracy']:.3f} "
        f"reached at epoch {ft['epoch_of_final']} ({ft['time_to_final']:.3f} s)")
    # The body alone, once over the 200 images in float32 and float64: the floor of both methods.
    body = ex.model.body
    floor = {}
    with torch.no_grad():
        for dt in (torch.float32, torch.float64):
            b = body.to(dt)
            xs = torch.cat([train.X, test.X]).to(dt)
            start = time.perf_counter()
            b(xs)
            floor[str(dt).replace("torch.", "")] = time.perf_counter() - start
        body.float()
    return {"n_train": len(train), "n_test": len(test), "classifier": clf, "finetune": ft, "body_200_images": floor}


def _gp(model, train, test, params: str) -> dict:
    start = time.perf_counter()
    gp = LinearizedGP(model, params=params, noise=0.1).fit(train.X, train.y.double()).fit_hyperparameters()
    mean, var = gp.predict(test.X, include_noise=True)
    return {"seconds": time.perf_counter() - start, "rmse": rmse(mean, test.y.double()), "note": gp.lm.prefix_note,
            "prior_var": gp.prior_var, "noise": gp.noise, "mean": mean, "var": var}


def run_mlp(case: Case, rounds: int, log) -> dict:
    torch.manual_seed(SEED)
    ex = load_example(case.example)
    train, test = _split(ex.target, case)
    LinearizedGP(ex.model, params=case.params).fit(train.X[:2], train.y[:2].double())
    ops = {"before": _variant(_gp, cached=False), "after": _variant(_gp, cached=True)}
    res = _median_runs(ops, (ex.model, train, test, case.params), rounds, log)
    diff = max(float((res["after"]["mean"] - res["before"]["mean"]).abs().max()),
               float((res["after"]["var"] - res["before"]["var"]).abs().max()))
    for r in res.values():
        del r["mean"], r["var"]
    return {"example": case.example, "n_train": len(train), "n_test": len(test), "params": case.params,
            "gp": res, "max_abs_difference": diff}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--mlp-rounds", type=int, default=7)
    ap.add_argument("--out", default="bench/results/prefix_speed.json")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    stamp = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    with open("/proc/loadavg") as f:
        load_before = f.read().split()[:3]
    log = lambda msg: print(msg, flush=True)  # noqa: E731
    result = {"when": stamp, "machine": platform.processor() or platform.machine(), "torch": torch.__version__,
              "threads": 1, "load_before": load_before}
    log("faces")
    result["faces"] = run_faces(args.rounds, log)
    result["mlps"] = []
    for case in MLPS:
        log(case.example)
        result["mlps"].append(run_mlp(case, args.mlp_rounds, log))
    with open("/proc/loadavg") as f:
        result["load_after"] = f.read().split()[:3]
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1, default=float))
    print(table(result))


def _s(x: float) -> str:
    return f"{x * 1000:.0f} ms" if x < 1 else f"{x:.2f} s"


def table(r: dict) -> str:
    """Return the markdown tables of docs/benchmarks.md from a result dict."""
    f = r["faces"]
    ft = f["finetune"]
    ft_final = ft["time_to_final"] + ft["predict_seconds"]
    ft_all = ft["seconds"] + ft["predict_seconds"]
    lines = [
        f"{r['when']}, torch {r['torch']}, 1 thread, load average {' '.join(r['load_before'])} → "
        f"{' '.join(r['load_after'])}; raw data in `bench/results/prefix_speed.json`.",
        "",
        f"faces, n = {f['n_train']} adapt / {f['n_test']} test, head only (P = 2,562), float64 engine:",
        "",
        "| run | total | fit + s² search | test probabilities | accuracy | s² | ÷ FT 100 epochs | ÷ FT to its final accuracy |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for name, c in f["classifier"].items():
        lines.append(
            f"| classifier, {name} | {_s(c['seconds'])} | {_s(c['fit_seconds'])} | {_s(c['predict_seconds'])} | "
            f"{c['accuracy']:.3f} | {c['prior_var']:g} | {ft_all / c['seconds']:.2f}× | {ft_final / c['seconds']:.2f}× |"
        )
    lines += [
        f"| fine-tuning, 100 epochs (+ test prediction) | {_s(ft_all)} | {_s(ft['seconds'])} | "
        f"{_s(ft['predict_seconds'])} | {ft['final_accuracy']:.3f} | – | 1 | – |",
        f"| fine-tuning to its final accuracy (epoch {ft['epoch_of_final']}, + test prediction) | {_s(ft_final)} | "
        f"{_s(ft['time_to_final'])} | {_s(ft['predict_seconds'])} | {ft['final_accuracy']:.3f} | – | – | 1 |",
        "",
        "(÷ columns: fine-tuning's time over the row's; above 1 the classifier is faster.) "
        f"The MobileNetV2 body once over all {f['n_train'] + f['n_test']} images: "
        f"{_s(f['body_200_images']['float32'])} in float32, {_s(f['body_200_images']['float64'])} in float64.",
        "",
        "MLPs, params = 'last:1': LinearizedGP fit + s²/σ² marginal-likelihood fit + test predictive variances:",
        "",
        "| example | n adapt / test | before | after | speed-up | max abs. difference | plan note |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for m in r["mlps"]:
        b, a = m["gp"]["before"]["seconds"], m["gp"]["after"]["seconds"]
        lines.append(
            f"| {m['example']} | {m['n_train']} / {m['n_test']} | {_s(b)} | {_s(a)} | {b / a:.2f}× | "
            f"{m['max_abs_difference']:.1e} | {m['gp']['after']['note']} |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    main()
