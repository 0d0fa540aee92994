"""Calibration benchmark (issue #16): linearized predictive options vs fine-tuning under image shifts.

A small CNN is trained on scikit-learn's handwritten digits (source half) and adapted with 5 or 20
labelled images per class to a shifted target domain (bench/shifts.py: rotation, contrast+blur+noise,
printed digits). Scored on the rest of the target domain: accuracy, NLL, Brier, ECE (10 bins).

Cases: three digit shifts at 5 and 20 labels per class, and the built-in `faces` example at its
pipeline defaults (MobileNetV2 head, 40 adaptation rows, split seed = seed).
Methods: unadapted; fine-tuned (Adam, all weights; faces: the pipeline's fine-tuning of the head);
an ensemble of ENSEMBLE fine-tunes; the linearized classifier (float64) with s² by the engine's old
grid evidence ('evidence (grid)'), and with each selection of core/prior_selection.select
('evidence_tau' = the default, 'heldout', 'heldout_1se'; they share their fits through `state`), each
with the probability maps of core/predictive.py (probit, pairwise probit, Laplace bridge, MC, MAP only)
applied to the chosen predictive N(μ/T, τΣ/T²). Per-module evidence only with --per-module-max.

    .venv/bin/python bench/calibration.py --quick     # 1 seed (~3-5 min on one core)
    .venv/bin/python bench/calibration.py             # 3 seeds
Regression (coverage) lives in bench/calibration_regression.py.
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from shifts import SHIFTS, per_class_split, shifted, source_and_pool  # noqa: E402

from ntk_studio.core import LinearizedClassifier  # noqa: E402
from ntk_studio.core.hyper import PRIOR_VAR_GRID  # noqa: E402
from ntk_studio.core.metrics_classification import classification_report  # noqa: E402
from ntk_studio.core.predictive import PROBA_MAPS, mc_proba  # noqa: E402
from ntk_studio.core.prior_selection import (  # noqa: E402
    CV_SCHEMES, DEFAULT_CV, DEFAULT_SELECTION, SELECTIONS, fit_dense, module_columns, module_evidence_search, module_kernels, predict_dense, select,
)

RESULTS = Path(__file__).resolve().parent / "results"
ENSEMBLE = 5
FT_EPOCHS = 60
FT_LR = 1e-3
FT_BATCH = 16
SOURCE_EPOCHS = 30
MC_SAMPLES = 10_000
MAX_TEST = 500  # scored target images per case (a seeded subset of the rest of the target domain)
MAPS = ("probit", "pairwise", "bridge", "mc", "map")


FIT_MC_SAMPLES = 1000  # MC draws per held-out row when T, τ are fitted on the MC map (common random numbers)


def row_name(selection: str, cv: str, fit_map: str = "pairwise") -> str:
    """Return the bench's row prefix for a selection, held-out scheme and the map T, τ were fitted with.

    The default scheme and the engine's map (pairwise) are unmarked.
    """
    marks = [m for m in (cv if cv != DEFAULT_CV else "", f"fit {fit_map}" if fit_map != "pairwise" else "") if m]
    return selection if not marks else f"{selection} [{', '.join(marks)}]"


def fit_proba(name: str):
    """Return the map the held-out search scores: the named one; 'mc' with fixed draws (smooth in T, τ)."""
    if name == "mc":
        return lambda m, c: mc_proba(m, c, FIT_MC_SAMPLES, torch.Generator().manual_seed(0))
    return PROBA_MAPS[name]


def cnn() -> nn.Sequential:
    """Return the small source CNN (16x16 gray -> 10 logits, 3,818 parameters)."""
    return nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(256, 10),
    )


def train(model: nn.Module, x: torch.Tensor, y: torch.Tensor, epochs: int, lr: float, batch: int, seed: int) -> nn.Module:
    """Return `model` after Adam on cross-entropy, seeded minibatch order."""
    g = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    model.train()
    for _ in range(epochs):
        for idx in torch.randperm(len(y), generator=g).split(batch):
            opt.zero_grad()
            nn.functional.cross_entropy(model(x[idx]), y[idx]).backward()
            opt.step()
    return model.eval()


def source_model(seed: int = 0) -> tuple[nn.Module, tuple]:
    (xs, ys), pool = source_and_pool()
    torch.manual_seed(seed)
    model = train(cnn(), xs, ys, SOURCE_EPOCHS, 3e-3, 64, seed)
    return model, pool


@torch.no_grad()
def softmax(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return torch.softmax(model(x).double(), -1)


def report(p: torch.Tensor, y: torch.Tensor, **extra) -> dict:
    return {**classification_report(p, y), **extra}


def module_predictive(lm, X, Xs, variances: list[float], fit, F0s, chunk: int = 100):
    """Return (mean, cov) of the test logits under per-module prior variances (dense, chunked)."""
    P = lm.num_params
    w = torch.empty(P, dtype=torch.float64)
    for s2, cols in zip(variances, module_columns(lm).values()):
        w[cols] = s2
    J = lm.jacobian(X).reshape(-1, P) * w
    means, covs = [], []
    for s in range(0, Xs.shape[0], chunk):
        Js = lm.jacobian(Xs[s:s + chunk])  # (m, C, P)
        Kc = J @ Js.reshape(-1, P).T
        blocks = torch.einsum("iap,ibp->iab", Js * w, Js)
        m, c = predict_dense(fit, F0s[s:s + chunk], Kc, blocks)
        means.append(m)
        covs.append(c)
    return torch.cat(means), torch.cat(covs)


def maps_report(mean, cov, y, prefix: str, out: dict, maps=MAPS, **extra) -> None:
    for name in maps:
        if name == "mc":
            p = mc_proba(mean, cov, MC_SAMPLES, torch.Generator().manual_seed(0))
        else:
            p = PROBA_MAPS[name](mean, cov)
        out[f"{prefix} · {name}"] = report(p, y, **extra)


def linearized_rows(model: nn.Module, X, y, Xs, ys, out: dict, folds: int, params: str = "all",
                    prior_var: float = 1.0, per_module: bool = False, selections=SELECTIONS, cvs=(DEFAULT_CV,),
                    maps=MAPS, grid_row: bool = True, pairs=None) -> None:
    """Add the linearized classifier's rows: the engine's grid evidence and each selection × cv of prior_selection."""
    t = time.perf_counter()
    clf = LinearizedClassifier(model, params=params, prior_var=prior_var).fit(X, y)
    if grid_row or per_module:
        clf.fit_hyperparameters(selection="evidence")
        mean, cov = clf.predict_logits(Xs)
        maps_report(mean, cov, ys, "evidence (grid)", out, maps, prior_var=clf.prior_var, seconds=time.perf_counter() - t)
    evidence_s2 = clf.prior_var

    K1 = clf.kernels.matrix(clf._data[0])  # unit-prior kernel J Jᵀ (the kernel builder has no s²)
    F0 = clf.lm.forward(clf._data[0])
    states: dict = {}
    evidence_state: dict = {}  # the evidence search depends on neither cv nor the map: shared
    fitted: dict = {}
    pairs = pairs or [(sel, cv, "pairwise") for cv in cvs for sel in selections]
    for sel, cv, fit_map in pairs:
        t = time.perf_counter()
        state = states.setdefault((cv, fit_map), {})
        if "evidence" in evidence_state:
            state.setdefault("evidence", evidence_state["evidence"])
        info = select(K1, F0, y, fit_proba(fit_map), sel, folds=folds, state=state, cv=cv)  # pairwise: the engine's
        if "evidence" in state:
            evidence_state.setdefault("evidence", state["evidence"])
        secs = time.perf_counter() - t
        s2, tau, T = info["chosen"], info["chosen_cov_scale"], info["chosen_temperature"]
        if s2 not in fitted:
            fitted[s2] = LinearizedClassifier(model, params=params, prior_var=s2).fit(X, y).predict_logits(Xs)
        mean, cov = fitted[s2]
        extra = {"prior_var": s2, "cov_scale": tau, "temperature": T, "seconds": secs, "fits": info["fits"], "why": info["why"],
                 "cv": cv, "fit_map": fit_map, "heldout_nll": info["chosen_heldout_nll"],
                 "heldout_edge": info.get("heldout_edge"), "evidence_edge": info.get("evidence_edge"),
                 "cov_scale_edge": info["cov_scale_edge"], "temperature_edge": info["temperature_edge"],
                 "heldout_gain": info.get("heldout_gain"),
                 "heldout_gain_se": info.get("heldout_gain_se")}
        maps_report(mean / T, (tau / T**2) * cov, ys, row_name(sel, cv, fit_map), out, maps, **extra)
    if not per_module:
        return
    # Per-module prior variances by the evidence (dense function space).
    t = time.perf_counter()
    names, Ks = module_kernels(clf.lm, clf._data[0])
    minfo = module_evidence_search(Ks, F0, y, PRIOR_VAR_GRID, start=evidence_s2)
    fit = fit_dense(torch.einsum("m,mij->ij", torch.tensor(minfo["chosen"], dtype=Ks.dtype), Ks), F0, y)
    Xs64 = clf.lm.prepare(Xs)
    mean, cov = module_predictive(clf.lm, clf._data[0], Xs64, minfo["chosen"], fit, clf.lm.forward(Xs64))
    maps_report(mean, cov, ys, "per-module evidence", out, maps, prior_var=dict(zip(names, minfo["chosen"])),
                seconds=time.perf_counter() - t)


def case(model: nn.Module, pool, shift: str, per_class: int, seed: int, folds: int, per_module: bool, **rows) -> dict:
    xt, yt = shifted(shift, pool)
    adapt, test = per_class_split(yt, per_class, seed)
    test = test[torch.randperm(len(test), generator=torch.Generator().manual_seed(seed))[:MAX_TEST]]
    X, y, Xs, ys = xt[adapt], yt[adapt], xt[test], yt[test]
    out: dict = {}
    out["unadapted"] = report(softmax(model, Xs), ys)

    t = time.perf_counter()
    members = [train(copy.deepcopy(model), X, y, FT_EPOCHS, FT_LR, FT_BATCH, seed * 100 + k) for k in range(ENSEMBLE)]
    probs = [softmax(m, Xs) for m in members]
    out["fine-tuned"] = report(probs[0], ys, seconds=(time.perf_counter() - t) / ENSEMBLE)
    out[f"fine-tuned ensemble ({ENSEMBLE})"] = report(torch.stack(probs).mean(0), ys, seconds=time.perf_counter() - t)
    linearized_rows(model, X, y, Xs, ys, out, folds, per_module=per_module, **rows)
    return out


def faces_case(seed: int, folds: int, **rows) -> dict:
    """The built-in `faces` example at its pipeline defaults (head only, 40 adaptation rows), split `seed`."""
    from ntk_studio.core.examples.registry import load_example
    from ntk_studio.core.pipeline import run_split, split
    from ntk_studio.pipeline_defaults import settings_for

    ex = load_example("faces")
    settings = settings_for("faces").replace(seed=seed, ensemble=ENSEMBLE, fit_hyper=False)
    adapt, test = split(ex.target, settings)
    res = run_split(ex.model, "classification", adapt, test, settings, methods=("fine-tuned", "ensemble"))
    out: dict = {}
    for rec in res.records:
        name = f"fine-tuned ensemble ({ENSEMBLE})" if rec.method.startswith("fine-tuned ensemble") else rec.method
        out[name] = {**rec.metrics, "seconds": rec.wall_time_s}
    linearized_rows(ex.model, adapt.X, adapt.y, test.X, test.y, out, folds, params=settings.params,
                    prior_var=settings.prior_var, **rows)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="one seed")
    ap.add_argument("--seeds", type=int, default=None)
    ap.add_argument("--shifts", nargs="*", default=[*SHIFTS, "faces"])
    ap.add_argument("--labels", nargs="*", type=int, default=[5, 20])
    ap.add_argument("--folds", type=int, default=5)
    ap.add_argument("--per-module-max", type=int, default=0,
                    help="run the per-module evidence search up to this many labels per class (it is slow)")
    ap.add_argument("--selections", nargs="*", default=list(SELECTIONS), choices=SELECTIONS,
                    help="the prior_selection selections to compute (default: all)")
    ap.add_argument("--cv", nargs="*", default=[DEFAULT_CV], choices=CV_SCHEMES,
                    help="held-out schemes for T, τ (and 'heldout''s s²); rows of non-default ones are marked [cv]")
    ap.add_argument("--maps", nargs="*", default=list(MAPS), choices=MAPS, help="probability maps to score")
    ap.add_argument("--pairs", nargs="*", default=None,
                    help="selection:cv[:fit map] triples to compute instead of --selections × --cv "
                         "(fit map: the map T, τ are fitted with, default pairwise)")
    ap.add_argument("--no-grid-row", action="store_true", help="skip the engine's old grid-evidence row")
    ap.add_argument("--seed-list", nargs="*", type=int, default=None, help="these seeds instead of range(--seeds)")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args(argv)
    rows = {"selections": tuple(args.selections), "cvs": tuple(args.cv), "maps": tuple(args.maps),
            "grid_row": not args.no_grid_row,
            "pairs": None if args.pairs is None else [(*(p.split(":") + ["pairwise"])[:3],) for p in args.pairs]}
    if rows["pairs"]:
        bad = [p for p in rows["pairs"] if p[0] not in SELECTIONS or p[1] not in CV_SCHEMES or p[2] not in MAPS]
        if bad:
            ap.error(f"unknown selection, cv or map in --pairs: {bad}")
    torch.set_num_threads(1)
    seeds = args.seeds or (1 if args.quick else 3)
    model, pool = source_model()
    results = []
    out = args.out or RESULTS / ("calibration_quick.json" if args.quick else "calibration.json")
    for shift in args.shifts:
        for per_class in args.labels if shift != "faces" else [20]:
            for seed in (args.seed_list if args.seed_list is not None else range(seeds)):
                t = time.perf_counter()
                if shift == "faces":
                    res = faces_case(seed, args.folds, **rows)
                else:
                    res = case(model, pool, shift, per_class, seed, args.folds, per_class <= args.per_module_max, **rows)
                results.append({"shift": shift, "per_class": per_class, "seed": seed, "methods": res})
                print(f"## {shift}, {per_class}/class, seed {seed} ({time.perf_counter() - t:.0f} s)", flush=True)
                for name, r in res.items():
                    print(f"  {name:34s} acc {r['accuracy']:.3f} nll {r['nll']:.3f} brier {r['brier']:.3f} "
                          f"ece {r['ece']:.3f}  {r.get('prior_var', '')} {r.get('cov_scale', '')} "
                          f"{r.get('temperature', '')}", flush=True)
                shown = rows["pairs"] or [(sel, cv, "pairwise") for cv in args.cv for sel in args.selections]
                for name in (row_name(*p) for p in shown):
                    r = res.get(name + " · pairwise") or next(v for k, v in res.items() if k.startswith(name + " · "))
                    print(f"  {name}: {r['why']} [{r['fits']} fits, {r['seconds']:.1f} s]")
                out.write_text(json.dumps(results, indent=1, default=str))  # after every case
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
