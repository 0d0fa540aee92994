"""Side-by-side comparison on one split: the linearized GP (or classifier), fine-tuning, an optional
fine-tuned ensemble, and the unadapted model, each summarized as a :class:`ComparisonRecord`.

Point predictors (the unadapted and the fine-tuned model) have no uncertainty of their own; for
regression they are scored with a homoscedastic Gaussian whose variance is their own mean squared
residual on the adaptation split (the ensemble adds that to its spread across members).
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass

import torch
from torch import nn

from .classify import LinearizedClassifier
from .comparison import ComparisonRecord, classification_record, regression_record
from .data.dataset import Dataset
from .finetune import FineTuneSettings, finetune, finetune_ensemble, predict
from .gp import LinearizedGP

MIN_RESIDUAL_VAR = 1e-12
# Prior variances tried for the classifier (Laplace evidence has no cheap closed-form optimum).
PRIOR_VAR_GRID = tuple(10.0**k for k in range(-4, 3))


@dataclass(frozen=True)
class CompareSettings:
    """What to compare: the GP's prior and noise, and the fine-tuning baseline's settings."""

    params: str = "all"
    prior_var: float = 1.0
    noise: float = 0.1
    fit_hyper: bool = True
    finetune: FineTuneSettings = FineTuneSettings()
    ensemble_members: int = 0


def _residual_var(pred: torch.Tensor, y: torch.Tensor) -> float:
    return max(float(((pred.double() - y.double()) ** 2).mean()), MIN_RESIDUAL_VAR)


def _timed(fn):
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


def _regression(model, train, test, s: CompareSettings) -> list[ComparisonRecord]:
    y_tr, y_te = train.y.double(), test.y.double()
    records = []

    def base_pred(X, like):
        with torch.no_grad():
            return predict(model, X, task="regression").double().reshape(like.shape)

    (base_te, base_tr), t = _timed(lambda: (base_pred(test.X, y_te), base_pred(train.X, y_tr)))
    records.append(regression_record("unadapted", base_te, torch.full_like(base_te, _residual_var(base_tr, y_tr)), y_te, t))

    def gp_run():
        gp = LinearizedGP(model, params=s.params, prior_var=s.prior_var, noise=s.noise).fit(train.X, y_tr)
        if s.fit_hyper:
            gp.fit_hyperparameters()
        return gp, gp.predict(test.X, include_noise=True)

    (gp, (mean, var)), t = _timed(gp_run)
    records.append(regression_record(
        "linearized GP", mean, var, y_te, t, route=f"{gp.plan.space}/{gp.plan.solver}",
        products=gp.solve_info.products, prior_var=gp.prior_var, noise=gp.noise,
    ))

    ft, t = _timed(lambda: finetune(model, train, None, s.finetune))
    pred_te, pred_tr = predict(ft, test.X).double(), predict(ft, train.X).double()
    records.append(regression_record(
        "fine-tuned", pred_te, torch.full_like(pred_te, _residual_var(pred_tr, y_tr)), y_te, t,
        epochs=len(ft.history) - 1,
    ))
    if s.ensemble_members > 0:
        ens, t = _timed(lambda: finetune_ensemble(model, train, None, s.finetune, members=s.ensemble_members))
        m_te, v_te = ens.predict(test.X)
        m_tr, _ = ens.predict(train.X)
        var = v_te.double() + _residual_var(m_tr, y_tr)
        records.append(regression_record(f"fine-tuned ensemble ×{s.ensemble_members}", m_te.double(), var, y_te, t))
    return records


def _classification(model, train, test, s: CompareSettings) -> list[ComparisonRecord]:
    records = []
    probs, t = _timed(lambda: predict(model, test.X, task="classification"))
    records.append(classification_record("unadapted", probs.double(), test.y, t))

    def clf_run():
        clf = LinearizedClassifier(model, params=s.params, prior_var=s.prior_var).fit(train.X, train.y)
        if s.fit_hyper:
            clf = _best_evidence(clf, model, train, s)
        return clf, clf.predict_proba(test.X)

    (clf, probs), t = _timed(clf_run)
    records.append(classification_record(
        "linearized classifier", probs, test.y, t, route=f"{clf.plan.space}/{clf.plan.solver}",
        newton=clf.map_info.iterations, prior_var=clf.prior_var,
    ))
    ft, t = _timed(lambda: finetune(model, train, None, s.finetune))
    records.append(classification_record("fine-tuned", predict(ft, test.X).double(), test.y, t, epochs=len(ft.history) - 1))
    if s.ensemble_members > 0:
        ens, t = _timed(lambda: finetune_ensemble(model, train, None, s.finetune, members=s.ensemble_members))
        records.append(classification_record(f"fine-tuned ensemble ×{s.ensemble_members}", ens.predict(test.X).double(), test.y, t))
    return records


def _best_evidence(clf, model, train, s: CompareSettings):
    """Return the classifier whose prior variance maximizes the Laplace evidence on a log grid."""
    best, best_lml = clf, clf.log_marginal_likelihood()
    for prior_var in PRIOR_VAR_GRID:
        cand = LinearizedClassifier(model, params=s.params, prior_var=prior_var, solver="cholesky")
        cand.fit(train.X, train.y)
        lml = cand.log_marginal_likelihood()
        if lml > best_lml:
            best, best_lml = cand, lml
    return best


def compare(model: nn.Module, train: Dataset, test: Dataset, settings: CompareSettings = CompareSettings()) -> list[ComparisonRecord]:
    """Return one record per method (unadapted, GP/classifier, fine-tuned, ensemble) on `test`."""
    task = "classification" if train.is_classification else "regression"
    # Fine-tuning trains exactly the subset the GP linearizes, on the same task.
    settings = dataclasses.replace(
        settings, finetune=dataclasses.replace(settings.finetune, params=settings.params, task=task)
    )
    # One untimed tiny fit first: the first torch.func call in a process imports and warms up
    # ~1.5 s of machinery, which would otherwise be charged to whichever method runs first.
    warm = train.subset(range(min(2, len(train))))
    if train.is_classification:
        LinearizedClassifier(model, params=settings.params).fit(warm.X, warm.y)
        return _classification(model, train, test, settings)
    LinearizedGP(model, params=settings.params).fit(warm.X, warm.y.double())
    return _regression(model, train, test, settings)
