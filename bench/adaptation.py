"""Benchmark 4: adaptation by the linearized GP (or classifier) against fine-tuning, on the built-in examples.

Same splits and settings as the `compare` tables of docs/benchmarks.md (sine: 10 labelled points;
hprice3: 40 labelled 1981 sales, lr 3e-3; faces: 40 images per class, head only, 100 epochs).
The GP side is timed from the first call to its prediction (fit, marginal-likelihood fit of s² and
σ², or the classifier's evidence search over PRIOR_VAR_GRID, then prediction). Fine-tuning (Adam,
batch 32, no early stopping) reports its test metric after every epoch; those evaluations are not
training, so the epoch timestamps come from a second, identical (seeded) run without them:
epoch e ends at e/E of that run's wall time.

From the two: the time each needs to reach the fine-tuned model's final test RMSE (accuracy for
faces), the time fine-tuning needs to reach the GP's, and the test NLL of each at equal time
(fine-tuning's last epoch finished within the GP's time). Fine-tuned regression models are scored
with a Gaussian whose variance is their mean squared residual on the adaptation split at that epoch.
"""

from __future__ import annotations

import dataclasses
import math
import time

import numpy as np
import torch

from ntk_studio.core import FineTuneSettings, LinearizedClassifier, LinearizedGP, finetune, finetune_iter
from ntk_studio.core.hyper import PRIOR_VAR_GRID
from ntk_studio.core.data import adaptation_split
from ntk_studio.core.examples.registry import load_example
from ntk_studio.core.metrics_regression import gaussian_nll, rmse
from ntk_studio.core.metrics_classification import accuracy, categorical_nll

SEED = 0
MIN_RESIDUAL_VAR = 1e-12


@dataclasses.dataclass(frozen=True)
class Case:
    """One example with its split and fine-tuning settings."""

    example: str
    n_adapt: int | None = None  # regression: labelled rows
    per_class: int | None = None  # classification: labelled rows per class
    params: str = "all"
    lr: float = 1e-3
    epochs: int = 300


CASES = {
    "full": (Case("sine", n_adapt=10), Case("hprice3", n_adapt=40, lr=3e-3),
             Case("faces", per_class=40, params="head", epochs=100)),
    "quick": (Case("sine", n_adapt=10), Case("hprice3", n_adapt=40, lr=3e-3),
              Case("faces", per_class=5, params="head", epochs=20)),
}


def _split(ds, case: Case):
    if case.per_class is None:
        tr, te = adaptation_split(len(ds), case.n_adapt, SEED)
        return ds.subset(tr), ds.subset(te)
    rng, labels, picked = np.random.default_rng(SEED), ds.y.numpy(), []
    for c in range(len(ds.class_names)):
        picked.extend(rng.choice(np.flatnonzero(labels == c), case.per_class, replace=False))
    chosen = np.zeros(len(ds), dtype=bool)
    chosen[picked] = True
    return ds.subset(np.flatnonzero(chosen)), ds.subset(np.flatnonzero(~chosen))


def _gp(model, train, test, case: Case) -> dict:
    """Return the GP's (or classifier's) test metrics and wall time, after an untimed warm-up fit."""
    if train.is_classification:
        LinearizedClassifier(model, params=case.params).fit(train.X[:2], train.y[:2])
        start = time.perf_counter()
        best, best_lml = None, -math.inf
        for prior_var in PRIOR_VAR_GRID:
            clf = LinearizedClassifier(model, params=case.params, prior_var=prior_var).fit(train.X, train.y)
            lml = clf.log_marginal_likelihood()
            if lml > best_lml:
                best, best_lml = clf, lml
        probs = best.predict_proba(test.X)
        seconds = time.perf_counter() - start
        single = time.perf_counter()
        LinearizedClassifier(model, params=case.params, prior_var=best.prior_var).fit(train.X, train.y).predict_proba(test.X)
        return {"seconds": seconds, "seconds_one_prior": time.perf_counter() - single, "prior_var": best.prior_var,
                "metric": accuracy(probs, test.y), "nll": categorical_nll(probs, test.y)}
    y_tr, y_te = train.y.double(), test.y.double()
    LinearizedGP(model, params=case.params).fit(train.X[:2], y_tr[:2])
    start = time.perf_counter()
    gp = LinearizedGP(model, params=case.params, noise=0.1).fit(train.X, y_tr).fit_hyperparameters()
    mean, var = gp.predict(test.X, include_noise=True)
    seconds = time.perf_counter() - start
    return {"seconds": seconds, "prior_var": gp.prior_var, "noise": gp.noise,
            "metric": rmse(mean, y_te), "nll": gaussian_nll(mean, var, y_te)}


def _finetune(model, train, test, case: Case) -> dict:
    """Return fine-tuning's per-epoch test metric and NLL with training-only timestamps."""
    task = "classification" if train.is_classification else "regression"
    s = FineTuneSettings(params=case.params, lr=case.lr, epochs=case.epochs, patience=None, seed=SEED, task=task)
    start = time.perf_counter()
    finetune(model, train, None, s)  # the timed run: training only
    train_s = time.perf_counter() - start
    grid = None if train.is_classification else train.X
    gen = finetune_iter(model, train, test, s, grid=grid)
    metric, nll = [], []
    for ev in gen:
        if train.is_classification:
            metric.append(ev.val_metrics["accuracy"])
            nll.append(ev.val_metrics["nll"])
        else:
            # val_loss is the test MSE; the model's own variance is its adaptation-split residual.
            var = max(float(((torch.as_tensor(ev.grid_pred).double() - train.y.double()) ** 2).mean()),
                      MIN_RESIDUAL_VAR)
            metric.append(math.sqrt(ev.val_loss))
            nll.append(0.5 * (math.log(2 * math.pi * var) + ev.val_loss / var))
    times = [train_s * e / case.epochs for e in range(case.epochs + 1)]
    return {"seconds": train_s, "times": times, "metric": metric, "nll": nll}


def _first_time(times, values, target, higher_better: bool) -> float | None:
    for t, v in zip(times, values):
        if (v >= target) if higher_better else (v <= target):
            return t
    return None


def run_case(case: Case) -> dict:
    """Return the GP-vs-fine-tuning summary for one example."""
    torch.manual_seed(SEED)
    ex = load_example(case.example)
    train, test = _split(ex.target, case)
    gp = _gp(ex.model, train, test, case)
    ft = _finetune(ex.model, train, test, case)
    higher = train.is_classification
    final = ft["metric"][-1]
    at_gp_time = max(e for e, t in enumerate(ft["times"]) if t <= gp["seconds"])
    gp_reaches = gp["metric"] >= final if higher else gp["metric"] <= final
    return {
        "example": case.example, "metric_name": "accuracy" if higher else "rmse",
        "n_train": len(train), "n_test": len(test), "params": case.params, "epochs": case.epochs, "lr": case.lr,
        "gp": gp,
        "ft": {"seconds": ft["seconds"], "final_metric": final, "final_nll": ft["nll"][-1],
               "best_metric": max(ft["metric"]) if higher else min(ft["metric"]),
               "time_to_own_final": _first_time(ft["times"], ft["metric"], final, higher),
               "time_to_gp_metric": _first_time(ft["times"], ft["metric"], gp["metric"], higher),
               "epoch_at_gp_time": at_gp_time, "nll_at_gp_time": ft["nll"][at_gp_time],
               "metric_at_gp_time": ft["metric"][at_gp_time],
               "curve": {"times": ft["times"], "metric": ft["metric"], "nll": ft["nll"]}},
        "gp_time_to_ft_final": gp["seconds"] if gp_reaches else None,
    }


def run(mode: str, log=print) -> dict:
    """Return {"rows": [...]} for every example of the mode (an unavailable example is recorded as such)."""
    torch.set_num_threads(1)
    rows = []
    for case in CASES[mode]:
        start = time.perf_counter()
        try:
            rows.append(run_case(case))
        except Exception as exc:  # an optional example (faces) may be missing its package
            rows.append({"example": case.example, "status": "error", "reason": f"{type(exc).__name__}: {exc}"[:200]})
        log(f"adaptation {case.example}: {time.perf_counter() - start:.0f} s")
    return {"rows": rows}
