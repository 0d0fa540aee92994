"""scikit-learn estimators over the engine: :class:`NTKRegressor` and :class:`NTKClassifier`.

They wrap :class:`~.gp.LinearizedGP` and :class:`~.classify.LinearizedClassifier` so a pretrained
torch model can sit in a ``Pipeline`` or ``GridSearchCV``: NumPy in, NumPy out, constructor
arguments as hyperparameters (``get_params``/``set_params``), fitted state in trailing-underscore
attributes. ``model`` is the pretrained ``nn.Module`` (its weights are copied, never changed), or a
callable ``(n_features, n_outputs) -> nn.Module``, or None for a small tanh MLP built from
``random_state`` (what scikit-learn's generic checks use, since they vary the number of features).
Rows are reshaped to ``input_shape`` before the model sees them (e.g. flattened images).

Needs scikit-learn (the ``examples`` extra).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from sklearn.base import BaseEstimator, ClassifierMixin, RegressorMixin
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.validation import check_is_fitted, validate_data
from torch import nn

from .classify import LinearizedClassifier
from .gp import LinearizedGP

DEFAULT_HIDDEN = 32  # width of the default model's hidden layer (model=None)


def default_model(n_features: int, n_outputs: int, seed: int = 0) -> nn.Module:
    """Return a tanh MLP n_features-32-n_outputs with weights from `seed` (the global RNG is left alone)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return nn.Sequential(nn.Linear(n_features, DEFAULT_HIDDEN), nn.Tanh(), nn.Linear(DEFAULT_HIDDEN, n_outputs))


class _NTKBase(BaseEstimator):
    """Plumbing shared by both estimators: model resolution and array conversion."""

    def _resolve_model(self, n_features: int, n_outputs: int) -> nn.Module:
        model: nn.Module | Callable[[int, int], nn.Module] | None = self.model
        if model is None:
            return default_model(n_features, n_outputs, 0 if self.random_state is None else int(self.random_state))
        if isinstance(model, nn.Module):
            return model
        if callable(model):
            return model(n_features, n_outputs)
        raise TypeError(f"model must be an nn.Module, a callable (n_features, n_outputs) -> nn.Module, or None; got {model!r}.")

    def _tensor(self, X: np.ndarray) -> torch.Tensor:
        T = torch.tensor(np.asarray(X, dtype=np.float64))  # a copy: sklearn may pass read-only memmaps
        return T.reshape(T.shape[0], *self.input_shape) if self.input_shape is not None else T

    def _predictor_kwargs(self) -> dict:
        return dict(params=self.params, prior_var=self.prior_var, space=self.space, solver=self.solver,
                    best_effort=self.best_effort)


class NTKRegressor(RegressorMixin, _NTKBase):
    """Linearized-network GP regression as a scikit-learn regressor.

    `prior_var` (s²) and `noise` (σ²) start the marginal-likelihood fit when `fit_hyper` is True and
    are used as given otherwise. ``predict(X, return_std=True)`` also returns the posterior standard
    deviation of the noise-free function (add ``noise_`` to its square for that of a new y).
    """

    def __init__(self, model=None, params="all", prior_var=1.0, noise=0.1, fit_hyper=True, space="auto",
                 solver="auto", input_shape=None, random_state=0, best_effort=False):
        self.model = model
        self.params = params
        self.prior_var = prior_var
        self.noise = noise
        self.fit_hyper = fit_hyper
        self.space = space
        self.solver = solver
        self.input_shape = input_shape
        self.random_state = random_state
        self.best_effort = best_effort

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.target_tags.multi_output = True  # a K-output model gives a K-output GP
        return tags

    def fit(self, X, y):
        """Return self after fitting the posterior (and, with fit_hyper, s² and σ²) to (X, y)."""
        X, y = validate_data(self, X, y, multi_output=True, y_numeric=True, dtype=np.float64)
        y = np.asarray(y, dtype=np.float64)
        self._vector = y.ndim == 1
        Y = torch.from_numpy(y.reshape(y.shape[0], -1).copy())
        model = self._resolve_model(X.shape[1], Y.shape[1])
        self.gp_ = LinearizedGP(model, noise=self.noise, **self._predictor_kwargs()).fit(self._tensor(X), Y)
        if self.fit_hyper:
            self.gp_.fit_hyperparameters()
        self.prior_var_, self.noise_ = self.gp_.prior_var, self.gp_.noise
        return self

    def predict(self, X, return_std=False):
        """Return the posterior mean (n,) or (n, K); with return_std, also the posterior std of f."""
        check_is_fitted(self)
        X = validate_data(self, X, reset=False, dtype=np.float64)
        mean, var = self.gp_.predict(self._tensor(X))
        mean, std = mean.numpy(), var.sqrt().numpy()
        if self._vector:
            mean, std = mean[:, 0], std[:, 0]
        return (mean, std) if return_std else mean


class NTKClassifier(ClassifierMixin, _NTKBase):
    """Linearized-network Laplace classification as a scikit-learn classifier.

    Labels may be any values ``np.unique`` sorts; the model needs one output (logit) per class.
    With `fit_hyper`, the prior variance is chosen by the Laplace evidence on a log grid.
    `proba_method` is the predictive ('auto', 'probit', 'pairwise'; see LinearizedClassifier).
    """

    def __init__(self, model=None, params="all", prior_var=1.0, fit_hyper=True, space="auto", solver="auto",
                 proba_method="auto", input_shape=None, random_state=0, best_effort=False):
        self.model = model
        self.params = params
        self.prior_var = prior_var
        self.fit_hyper = fit_hyper
        self.space = space
        self.solver = solver
        self.proba_method = proba_method
        self.input_shape = input_shape
        self.random_state = random_state
        self.best_effort = best_effort

    def fit(self, X, y):
        """Return self after the MAP and Laplace posterior (and, with fit_hyper, the evidence search)."""
        X, y = validate_data(self, X, y, dtype=np.float64)
        check_classification_targets(y)
        self.classes_, idx = np.unique(y, return_inverse=True)
        if len(self.classes_) < 2:
            raise ValueError(f"NTKClassifier needs at least 2 classes in y; got 1 class ({self.classes_[0]!r}).")
        model = self._resolve_model(X.shape[1], len(self.classes_))
        self.clf_ = LinearizedClassifier(model, **self._predictor_kwargs())
        self.clf_.fit(self._tensor(X), torch.from_numpy(idx.astype(np.int64)))
        if self.fit_hyper:
            self.clf_.fit_hyperparameters()
        self.prior_var_ = self.clf_.prior_var
        return self

    def predict_proba(self, X):
        """Return the predictive class probabilities (n, n_classes), columns in the order of classes_."""
        check_is_fitted(self)
        X = validate_data(self, X, reset=False, dtype=np.float64)
        return self.clf_.predict_proba(self._tensor(X), method=self.proba_method).numpy()

    def predict(self, X):
        """Return the most probable class label per row."""
        proba = self.predict_proba(X)  # first: it raises NotFittedError before classes_ is read
        return self.classes_[np.argmax(proba, axis=1)]
