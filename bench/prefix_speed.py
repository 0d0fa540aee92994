"""Frozen prefix (issue #17): the linearized classifier on `faces`, with its hyperparameter search, vs fine-tuning.

One run, one thread, so every ratio is measured under the same load. Every timed call starts cold:
``prefix.clear_cache()`` and fresh classifier objects (so fresh KernelBuilders and operator caches);
an untimed warm-up first pays the process's one-time imports (torch.func, autograd, Adam) for both
methods.

faces (MobileNetV2 body, 2,562 head parameters; benchmark 4's split: 40 images per class to adapt,
the other 120 to test), interleaved rounds (every classifier variant once per round; medians):

* classifier: ``LinearizedClassifier(model, params="head").fit(X, y).fit_hyperparameters()`` (the
  engine's default selection, prior_selection.DEFAULT_SELECTION), then ``predict_proba`` on the test
  images. The frozen body runs in the model's own float32 (``prefix_dtype="model"``, the default).
* the same with the body in float64 (the model converted to float64: the same numbers as
  ``prefix_dtype="engine"``), and the same with ``selection="heldout"``.
* fine-tuning the same head the usual way (Adam, batch 32, lr 1e-3, float32, the body run every
  batch), stopped at its final accuracy: the first epoch whose test accuracy reaches that of epoch 100,
  found by an untimed seeded run with the test set as validation (or given by ``--final-epochs``).
  The timed run is the same seeded run with ``epochs`` set to that epoch (its first epochs are the
  same), plus the fine-tuned head's prediction on the test images. The pipeline's own faces settings
  (batch 16, lr 3e-3, 40 epochs) are a second row; the 100-epoch run is timed once.
* fine-tuning on cached features (not the usual way, reported beside it): the body once over the 80
  adaptation images, the head trained on those features, the body once over the test images.

The body alone over the 200 images (float32 / float64, chunked like the engine) is timed too.

    .venv/bin/python bench/prefix_speed.py [--rounds 3] [--mlp-rounds 5] [--final-epochs 2 1 2] [--out ...]
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import platform
import statistics
import subprocess
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
from ntk_studio.core.metrics_classification import accuracy  # noqa: E402
from ntk_studio.core.metrics_regression import rmse  # noqa: E402
from ntk_studio.core.prior_selection import DEFAULT_SELECTION  # noqa: E402
from ntk_studio.pipeline_defaults import settings_for  # noqa: E402

FACES = Case("faces", per_class=40, params="head", epochs=100)
FT_USUAL = {"lr": 1e-3, "batch_size": 32, "epochs": 100}  # benchmark 4's fine-tuning
MLPS = (Case("sine", n_adapt=10, params="last:1"), Case("hprice3", n_adapt=40, params="last:1", lr=3e-3))


def _classifier(model, train, test, params: str, selection: str | None = None) -> dict:
    """Fit at s² = 1, the hyperparameter search (refit at the winner), test probabilities; all timed."""
    start = time.perf_counter()
    clf = LinearizedClassifier(model, params=params, prior_var=1.0).fit(train.X, train.y)
    fitted = time.perf_counter()
    clf.fit_hyperparameters(selection=selection)
    searched = time.perf_counter()
    probs = clf.predict_proba(test.X)
    end = time.perf_counter()
    info = clf.hyper_info
    return {"seconds": end - start, "fit_seconds": fitted - start, "search_seconds": searched - fitted,
            "predict_seconds": end - searched, "accuracy": accuracy(probs, test.y), "prior_var": clf.prior_var,
            "cov_scale": clf.cov_scale, "selection": info.get("selection"), "note": clf.lm.prefix_note,
            "probe_error": clf.lm.prefix_probe_error, "probs": probs}


def _cold(fn):
    def run(*args, **kw):
        prefix.clear_cache()  # never time a call answered by an earlier repeat
        return fn(*args, **kw)

    return run


def _settings(lr: float, batch_size: int, epochs: int, params: str = "head") -> FineTuneSettings:
    return FineTuneSettings(params=params, lr=lr, epochs=epochs, batch_size=batch_size, patience=None, seed=SEED,
                            task="classification")


def _epoch_of_final(model, train, test, s: FineTuneSettings) -> tuple[int, list[float]]:
    """Return (first epoch whose test accuracy reaches the last epoch's, accuracy per epoch): an untimed seeded run."""
    acc = [ev.val_metrics["accuracy"] for ev in finetune_iter(model, train, test, s)]
    return next(e for e, a in enumerate(acc) if a >= acc[-1]), acc


def _ft_usual(model, train, test, s: FineTuneSettings) -> dict:
    """The usual fine-tuning for s.epochs epochs (the body runs every batch), then the test prediction; timed.

    A seeded run's first e epochs are the same whatever s.epochs is, so a run with epochs = the epoch
    of its final accuracy is the 100-epoch run stopped there.
    """
    start = time.perf_counter()
    result = finetune(model, train, None, s)
    trained = time.perf_counter()
    probs = predict(result, test.X)
    end = time.perf_counter()
    return {"seconds": end - start, "train_seconds": trained - start, "predict_seconds": end - trained,
            "accuracy": accuracy(probs, test.y)}


def _ft_cached(model, train, test, s: FineTuneSettings) -> dict:
    """Fine-tuning the head on the body's features computed once (float32), then the test images once; timed."""
    start = time.perf_counter()
    split, why = prefix.find_split(model, [n for n, _ in model.named_parameters() if n.startswith(s.params)])
    if split is None:
        return {"skipped": why}
    with torch.no_grad():
        Z = torch.cat([split.prefix(c) for c in train.X.split(32)])
    result = finetune(split.suffix, (Z, train.y), None, dataclasses.replace(s, params="all"))
    trained = time.perf_counter()
    with torch.no_grad():
        Zt = torch.cat([split.prefix(c) for c in test.X.split(32)])
    probs = predict(result, Zt)
    end = time.perf_counter()
    return {"seconds": end - start, "train_seconds": trained - start, "predict_seconds": end - trained,
            "accuracy": accuracy(probs, test.y)}


def _cached_curve(model, train, test, s: FineTuneSettings) -> tuple[int, list[float]]:
    split, _ = prefix.find_split(model, [n for n, _ in model.named_parameters() if n.startswith(s.params)])
    with torch.no_grad():
        Z, Zt = split.prefix(train.X), split.prefix(test.X)
    return _epoch_of_final(split.suffix, (Z, train.y), (Zt, test.y), dataclasses.replace(s, params="all"))


def _body_alone(model: torch.nn.Module, X: torch.Tensor) -> dict:
    """The body once over X in float32 and float64, chunked as the engine chunks it."""
    out = {}
    with torch.no_grad():
        for dt in (torch.float32, torch.float64):
            body = copy.deepcopy(model.body).to(dt)
            rows = prefix.chunk_rows(X, dt, torch.device("cpu"), 1024)
            xs = X.to(dt)
            start = time.perf_counter()
            for c in xs.split(rows):
                body(c)
            out[str(dt).removeprefix("torch.")] = time.perf_counter() - start
    return out


def run_faces(rounds: int, log, final_epochs: tuple[int, int, int] | None = None) -> dict:
    torch.manual_seed(SEED)
    ex = load_example("faces")
    model = ex.model
    model64 = copy.deepcopy(model).double()  # the float64 body: same numbers as prefix_dtype="engine"
    train, test = _split(ex.target, FACES)
    # Untimed warm-up of both methods (torch.func / autograd / Adam first calls).
    LinearizedClassifier(model, params="head").fit(train.X[:4], train.y[:4]).predict_proba(test.X[:2])
    finetune(model, (train.X[:4], train.y[:4]), None, _settings(1e-3, 4, 1))
    d = settings_for("faces")
    fts = {"usual, benchmark 4 settings": _settings(**FT_USUAL), "usual, pipeline settings":
           _settings(d.lr, d.batch_size, d.epochs)}
    if final_epochs is None:
        curves = {name: _epoch_of_final(model, train, test, s) for name, s in fts.items()}
        curves["on cached features (not the usual way)"] = _cached_curve(model, train, test,
                                                                         fts["usual, benchmark 4 settings"])
    else:  # the epochs an earlier run of this script found (the runs are seeded and deterministic)
        names = (*fts, "on cached features (not the usual way)")
        curves = {name: (e, []) for name, e in zip(names, final_epochs)}
    fts["on cached features (not the usual way)"] = fts["usual, benchmark 4 settings"]
    for name, (e, acc) in curves.items():
        log(f"  fine-tuning {name}: final accuracy {acc[-1] if acc else float('nan'):.3f} first reached at epoch {e}")
    default = DEFAULT_SELECTION
    ops = {
        f"classifier, default search ({default}), float32 body": lambda: _cold(_classifier)(model, train, test, "head"),
        f"classifier, default search ({default}), float64 body": lambda: _cold(_classifier)(model64, train, test, "head"),
        "classifier, held-out search, float32 body": lambda: _cold(_classifier)(model, train, test, "head", "heldout"),
    }
    for name, s in fts.items():
        short = dataclasses.replace(s, epochs=curves[name][0])
        run = _ft_cached if "cached" in name else _ft_usual
        ops[f"fine-tuning {name}, to its final accuracy"] = lambda run=run, short=short: run(model, train, test, short)
    runs: dict[str, list[dict]] = {k: [] for k in ops}
    for r in range(rounds):
        for name, op in ops.items():
            runs[name].append(op())
            log(f"  round {r + 1}/{rounds} {name}: {runs[name][-1]['seconds']:.3f} s")
    p32 = runs[f"classifier, default search ({default}), float32 body"][-1]["probs"]
    p64 = runs[f"classifier, default search ({default}), float64 body"][-1]["probs"]
    precision = {"max_rel_diff_probs": float((p32 - p64).abs().max() / p64.abs().max()),
                 "same_predictions": bool(torch.equal(p32.argmax(1), p64.argmax(1))),
                 "nll_float32": float(-torch.log(p32.gather(1, test.y[:, None])).mean()),
                 "nll_float64": float(-torch.log(p64.gather(1, test.y[:, None])).mean())}
    with torch.no_grad():
        Z32 = torch.cat([model.body(c) for c in torch.cat([train.X, test.X]).split(32)]).double()
        Z64 = torch.cat([model64.body(c) for c in torch.cat([train.X, test.X]).double().split(32)])
    precision["max_rel_diff_features"] = float((Z32 - Z64).abs().max() / Z64.abs().max())
    timed = {}
    for name, rs in runs.items():
        keys = [k for k in ("seconds", "fit_seconds", "search_seconds", "train_seconds", "predict_seconds") if k in rs[0]]
        med = {k: statistics.median(x[k] for x in rs) for k in keys}
        timed[name] = {**{k: v for k, v in rs[-1].items() if k != "probs"}, **med, "all_seconds": [x["seconds"] for x in rs]}
    log(f"  precision: {precision}")
    # The whole usual run once (its 100 epochs), for the "÷ FT 100 epochs" column.
    full = _ft_usual(model, train, test, fts["usual, benchmark 4 settings"])
    log(f"  fine-tuning, all {FT_USUAL['epochs']} epochs: {full['seconds']:.2f} s")
    body = _body_alone(model, torch.cat([train.X, test.X]))
    return {"n_train": len(train), "n_test": len(test), "timed": timed, "precision": precision,
            "curves": {k: {"epoch_of_final": e, "accuracy": a} for k, (e, a) in curves.items()},
            "finetune_full": full, "body_200_images": body}


def _gp(model, train, test, params: str) -> dict:
    start = time.perf_counter()
    gp = LinearizedGP(model, params=params, noise=0.1).fit(train.X, train.y.double()).fit_hyperparameters()
    mean, var = gp.predict(test.X, include_noise=True)
    return {"seconds": time.perf_counter() - start, "rmse": rmse(mean, test.y.double()), "note": gp.lm.prefix_note,
            "mean": mean, "var": var}


def run_mlp(case: Case, rounds: int, log) -> dict:
    """sine / hprice3 (float32 MLPs, last:1): float32 prefix vs the float64 model, same GP fit and variances."""
    torch.manual_seed(SEED)
    ex = load_example(case.example)
    train, test = _split(ex.target, case)
    model64 = copy.deepcopy(ex.model).double()
    LinearizedGP(ex.model, params=case.params).fit(train.X[:2], train.y[:2].double())
    ops = {"float32 prefix": _cold(_gp), "float64 prefix": _cold(_gp)}
    models = {"float32 prefix": ex.model, "float64 prefix": model64}
    runs: dict[str, list[dict]] = {k: [] for k in ops}
    for _ in range(rounds):
        for name, op in ops.items():
            runs[name].append(op(models[name], train, test, case.params))
    a, b = runs["float32 prefix"][-1], runs["float64 prefix"][-1]
    diff = max(float((a["mean"] - b["mean"]).abs().max() / b["mean"].abs().max()),
               float((a["var"] - b["var"]).abs().max() / b["var"].abs().max()))
    out = {name: {"seconds": statistics.median(x["seconds"] for x in rs), "note": rs[-1]["note"]}
           for name, rs in runs.items()}
    log(f"  {case.example}: {out}, max rel. difference {diff:.1e}")
    return {"example": case.example, "n_train": len(train), "n_test": len(test), "params": case.params, "gp": out,
            "max_rel_difference": diff}


def run_rotation(rounds: int, log) -> dict:
    """rotation (regression, params of settings_for('rotation')): GP + its default s²/σ² fit + test variances vs fine-tuning.

    Fine-tuning "to its final accuracy" = the first epoch whose test RMSE is at most the last epoch's.
    """
    from ntk_studio.core.pipeline import split_rows
    from ntk_studio.pipeline_defaults import NOISE_FRACTION

    torch.manual_seed(SEED)
    ex = load_example("rotation")
    d = settings_for("rotation")
    rows_a, rows_t = split_rows(ex.target, d)
    train, test = ex.target.subset(rows_a), ex.target.subset(rows_t)
    model, model64 = ex.model, copy.deepcopy(ex.model).double()
    y, yt = train.y.double(), test.y.double()
    noise = NOISE_FRACTION * float(y.var())

    def gp(m) -> dict:
        prefix.clear_cache()
        start = time.perf_counter()
        g = LinearizedGP(m, params=d.params, noise=noise).fit(train.X, y).fit_hyperparameters()
        mean, var = g.predict(test.X, include_noise=True)
        return {"seconds": time.perf_counter() - start, "rmse": rmse(mean, yt), "note": g.lm.prefix_note,
                "mean": mean, "var": var}

    s = FineTuneSettings(params=d.params, lr=d.lr, epochs=d.epochs, batch_size=d.batch_size, patience=None,
                         seed=SEED, task="regression")
    gp(model)  # untimed warm-up of both methods
    finetune(model, (train.X[:4], y[:4].float()), None, dataclasses.replace(s, epochs=1))
    curve = [ev.val_metrics["rmse"] for ev in finetune_iter(model, train, test, s)]
    epoch = next(e for e, r in enumerate(curve) if r <= curve[-1])
    log(f"  rotation fine-tuning: final test RMSE {curve[-1]:.3f} first reached at epoch {epoch}")

    def ft() -> dict:
        start = time.perf_counter()
        result = finetune(model, train, None, dataclasses.replace(s, epochs=epoch))
        pred = predict(result, test.X)
        return {"seconds": time.perf_counter() - start, "rmse": rmse(pred.double().reshape(-1), yt)}

    ops = {"GP + default hyperparameter fit, float32 prefix": lambda: gp(model),
           "GP + default hyperparameter fit, float64 model": lambda: gp(model64),
           "fine-tuning to its final RMSE": ft}
    runs: dict[str, list[dict]] = {k: [] for k in ops}
    for r in range(rounds):
        for name, op in ops.items():
            runs[name].append(op())
            log(f"  rotation round {r + 1}/{rounds} {name}: {runs[name][-1]['seconds']:.3f} s, "
                f"RMSE {runs[name][-1]['rmse']:.3f}")
    a, b = runs["GP + default hyperparameter fit, float32 prefix"][-1], runs["GP + default hyperparameter fit, float64 model"][-1]
    diff = max(float((a["mean"] - b["mean"]).abs().max() / b["mean"].abs().max()),
               float((a["var"] - b["var"]).abs().max() / b["var"].abs().max()))
    out = {name: {"seconds": statistics.median(x["seconds"] for x in rs), "rmse": rs[-1]["rmse"],
                  "note": rs[-1].get("note", "")} for name, rs in runs.items()}
    return {"n_train": len(train), "n_test": len(test), "params": d.params, "epoch_of_final": epoch,
            "final_rmse": curve[-1], "epochs": d.epochs, "timed": out, "max_rel_difference": diff}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--mlp-rounds", type=int, default=5)
    ap.add_argument("--out", default="bench/results/prefix_speed.json")
    ap.add_argument("--only-rotation", action="store_true", help="measure the rotation example only")
    ap.add_argument("--final-epochs", type=int, nargs=3, metavar=("USUAL", "PIPELINE", "CACHED"),
                    help="skip the untimed accuracy runs: the epochs of final accuracy an earlier run found")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip() or "?"
    stamp = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    with open("/proc/loadavg") as f:
        load_before = f.read().split()[:3]
    log = lambda msg: print(msg, flush=True)  # noqa: E731
    result = {"when": stamp, "commit": commit, "machine": platform.processor() or platform.machine(),
              "torch": torch.__version__, "threads": 1, "load_before": load_before}
    if args.only_rotation:
        result["rotation"] = run_rotation(args.rounds, log)
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(result, indent=1, default=float))
        print(rotation_table(result))
        return
    log("faces")
    result["faces"] = run_faces(args.rounds, log, args.final_epochs)
    result["mlps"] = []
    for case in MLPS:
        result["mlps"].append(run_mlp(case, args.mlp_rounds, log))
    with open("/proc/loadavg") as f:
        result["load_after"] = f.read().split()[:3]
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1, default=float))
    print(table(result))


def _s(x: float) -> str:
    return f"{x * 1000:.0f} ms" if x < 1 else f"{x:.2f} s"


def rotation_table(r: dict) -> str:
    """Return the rotation table (GP with its hyperparameter fit vs fine-tuning to its final RMSE)."""
    ro = r["rotation"]
    t = ro["timed"]
    ft = t["fine-tuning to its final RMSE"]["seconds"]
    lines = [f"rotation, n = {ro['n_train']} adapt / {ro['n_test']} test, params {ro['params']}, medians of "
             f"{r.get('rounds', '3')} interleaved rounds; fine-tuning reaches its final test RMSE "
             f"{ro['final_rmse']:.2f} at epoch {ro['epoch_of_final']} of {ro['epochs']}:", "",
             "| run | total | test RMSE | ÷ FT to its final RMSE |", "| --- | --- | --- | --- |"]
    for name, c in t.items():
        lines.append(f"| {name} | {_s(c['seconds'])} | {c['rmse']:.2f} | **{ft / c['seconds']:.2f}×** |")
    lines.append(f"\nfloat32 prefix vs float64 model: means and variances differ by {ro['max_rel_difference']:.1e} (max, relative).")
    return "\n".join(lines)


def table(r: dict) -> str:
    """Return the markdown tables of docs/benchmarks.md from a result dict."""
    f = r["faces"]
    t = f["timed"]
    ref_name = "fine-tuning usual, benchmark 4 settings, to its final accuracy"
    ft_final = t[ref_name]["seconds"]
    ft_all = f["finetune_full"]["seconds"]
    rounds = len(t[ref_name]["all_seconds"])
    lines = [
        f"{r['when']}, commit {r['commit']}, torch {r['torch']}, 1 thread, load average "
        f"{' '.join(r['load_before'])} → {' '.join(r['load_after'])}; raw data in `bench/results/prefix_speed.json`.",
        "",
        f"faces, n = {f['n_train']} adapt / {f['n_test']} test, head only (P = 2,562), float64 engine; medians of "
        f"{rounds} interleaved rounds, every run from cold caches:",
        "",
        "| run | total | fit at s² = 1 / training | search + refit | test probabilities | test accuracy | s², τ | "
        "÷ FT to its final accuracy | ÷ FT 100 epochs |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for name, c in t.items():
        if "skipped" in c:
            continue
        if name.startswith("classifier"):
            first, search, hyper = _s(c["fit_seconds"]), _s(c["search_seconds"]), f"{c['prior_var']:g}, {c['cov_scale']:g}"
        else:
            key = name.removeprefix("fine-tuning ").removesuffix(", to its final accuracy")
            e = f["curves"][key]["epoch_of_final"]
            name = f"{name} (epoch {e})"
            first, search, hyper = _s(c["train_seconds"]), "–", "–"
        lines.append(
            f"| {name} | {_s(c['seconds'])} | {first} | {search} | {_s(c['predict_seconds'])} | {c['accuracy']:.3f} | "
            f"{hyper} | **{ft_final / c['seconds']:.2f}×** | {ft_all / c['seconds']:.2f}× |"
        )
    full = f["finetune_full"]
    lines.append(
        f"| fine-tuning usual, benchmark 4 settings, all {FT_USUAL['epochs']} epochs (once) | {_s(full['seconds'])} | "
        f"{_s(full['train_seconds'])} | – | {_s(full['predict_seconds'])} | {full['accuracy']:.3f} | – | "
        f"{ft_final / full['seconds']:.2f}× | 1 |"
    )
    p = f["precision"]
    b = f["body_200_images"]
    d = settings_for("faces")
    lines += [
        "",
        "(÷ columns: the usual fine-tuning's time over the row's; above 1 the row is faster. Benchmark 4 settings: Adam, "
        f"lr {FT_USUAL['lr']:g}, batch {FT_USUAL['batch_size']}; pipeline settings: lr {d.lr:g}, batch {d.batch_size}, "
        f"{d.epochs} epochs.) Final test accuracy first reached at epoch "
        + ", ".join(f"{v['epoch_of_final']} ({k})" for k, v in f["curves"].items()) + ".",
        f"The body alone over all {f['n_train'] + f['n_test']} images, chunked as the engine runs it: "
        f"{_s(b['float32'])} in float32, {_s(b['float64'])} in float64 ({b['float64'] / b['float32']:.1f}×).",
        f"float32 vs float64 body: features differ by {p['max_rel_diff_features']:.1e} (max, relative to the largest), "
        f"test probabilities by {p['max_rel_diff_probs']:.1e}; same predicted classes: {p['same_predictions']}; "
        f"test NLL {p['nll_float32']:.6f} vs {p['nll_float64']:.6f}.",
        "",
        "MLPs, params = 'last:1': LinearizedGP fit + s²/σ² marginal-likelihood fit + test predictive variances:",
        "",
        "| example | n adapt / test | float32 prefix | float64 model | max rel. difference (mean, variance) | plan note |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for m in r["mlps"]:
        a, b64 = m["gp"]["float32 prefix"], m["gp"]["float64 prefix"]
        lines.append(
            f"| {m['example']} | {m['n_train']} / {m['n_test']} | {_s(a['seconds'])} | {_s(b64['seconds'])} | "
            f"{m['max_rel_difference']:.1e} | {a['note']} |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    main()
