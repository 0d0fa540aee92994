"""The shape both linearized predictors share: validated options, fit / fit_iter, plan, cancel.

:class:`~.gp.LinearizedGP` and :class:`~.classify.LinearizedClassifier` differ in their likelihood
(Gaussian vs softmax) and so in how they fit, predict and search hyperparameters; everything else
(the linearized model, the kernel builder, the route plan, progress and cancel plumbing, option
checks at construction) lives here once.
"""

from __future__ import annotations

import dataclasses

from collections.abc import Generator, Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn

from . import options
from .distributed import SingleProcess
from .errors import NotFittedError
from .kernels import KernelBuilder
from .linearized import LinearizedModel
from .options import Solver, Space, choice, count, positive
from .params import ParamSpec
from .plan import Plan, make_plan
from .progress import CancelToken, ProgressEvent, Reporter, iterate
from .solvers import SolveInfo


class LinearizedPredictor:
    """Base of the linearized GP and classifier; not used on its own.

    Subclasses implement ``_fit_data(X, y, rep)`` (the fit, with ``self.lm.reporter`` set),
    ``_is_fitted()``, ``fit_hyperparameters`` and ``predict``.
    """

    solve_info: SolveInfo | None = None  # how the training solve went (None before a fit)

    def __init__(
        self,
        model: nn.Module,
        *,
        params: ParamSpec,
        prior_var: float,
        space: str,
        solver: str,
        dtype: torch.dtype,
        device: torch.device | str | None,
        memory_budget: int,
        chunk_size: int,
        cg_tol: float,
        cg_max_iter: int,
        structured: bool | None,
        shard: SingleProcess | None,
        best_effort: bool,
        independent: bool = False,
        prefix_dtype: str = "model",
    ) -> None:
        self.prior_var = positive(prior_var, "prior_var")
        self.space: Space = choice(Space, space, "space")
        self.solver: Solver = choice(Solver, solver, "solver")
        self.memory_budget = count(memory_budget, "memory_budget")
        self.cg_tol = positive(cg_tol, "cg_tol")
        self.cg_max_iter = count(cg_max_iter, "cg_max_iter")
        self.best_effort = bool(best_effort)
        self.lm = LinearizedModel(
            model, params, dtype=options.float_dtype(dtype), device=options.device(device),
            chunk_size=count(chunk_size, "chunk_size"), shard=shard, prefix_dtype=prefix_dtype,
        )
        self._follow_inputs = device is None  # then the data's device wins (e.g. CUDA inputs)
        self.kernels = KernelBuilder(self.lm, independent=independent, structured=structured)
        self.plan: Plan | None = None
        self.hyper_info: dict | None = None
        self._token: CancelToken | None = None

    def __getstate__(self) -> dict:
        # A cancel token holds a threading.Event, which cannot be pickled; a restored predictor starts idle.
        state = self.__dict__.copy()
        state["_token"] = None
        return state

    # ---------------------------------------------------------------- long work
    def cancel(self) -> None:
        """Ask this predictor's running fit, search or prediction to stop; it raises Cancelled at its next check."""
        if self._token is not None:
            self._token.cancel()

    def _reporter(self, cancel: CancelToken | None) -> Reporter:
        """Return a silent reporter whose token is `cancel` (or a fresh one that :meth:`cancel` sets)."""
        self._token = cancel or CancelToken()
        return Reporter(cancel=self._token)

    @contextmanager
    def _reporting(self, rep: Reporter | None) -> Iterator[Reporter | None]:
        """Route every data chunk's and product's cancel check and progress through `rep` while inside."""
        self.lm.reporter = rep
        try:
            yield rep
        finally:
            self.lm.reporter = None

    # ------------------------------------------------------------------ fitting
    def fit(self, X: torch.Tensor, y: torch.Tensor, cancel: CancelToken | None = None):
        """Return self after fitting the posterior to (X, y); `cancel` stops it with Cancelled."""
        self._fit(X, y, self._reporter(cancel))
        return self

    def fit_iter(
        self, X: torch.Tensor, y: torch.Tensor, cancel: CancelToken | None = None
    ) -> Generator[ProgressEvent, None, Any]:
        """Yield progress events while fitting; return self. Cancel through `cancel` or :meth:`cancel`."""
        self._token = cancel or CancelToken()
        yield from iterate(lambda rep: self._fit(X, y, rep), self._token)
        return self

    def _fit(self, X: torch.Tensor, y: torch.Tensor, rep: Reporter, **kwargs):
        with self._reporting(rep):
            return self._fit_data(X, y, rep, **kwargs)

    def _fit_data(self, X: torch.Tensor, y: torch.Tensor, rep: Reporter, **kwargs):  # pragma: no cover - abstract
        raise NotImplementedError

    def _inputs(self, X: torch.Tensor) -> torch.Tensor:
        """Return the model-ready copy of X (on the data's device when no device was given).

        A copy: caches are keyed on the training tensors, and the caller may change theirs in place.
        """
        if self._follow_inputs and torch.is_tensor(X) and X.device != self.lm.device:
            self.lm.to(X.device)
        return self.lm.prepare(X).clone()

    def _make_plan(self, X: torch.Tensor, n: int, K: int, rank: int, solver: str | None = None) -> Plan:
        """Return (and keep in :attr:`plan`) the route for n samples with K outputs."""
        self.kernels._decide(X)
        plan = make_plan(
            n, K, self.lm.num_params, self.space, solver or self.solver, self.memory_budget,
            itemsize=torch.finfo(self.lm.dtype).bits // 8, dense_jacobian=not self.kernels.use_structured,
            rank=rank, chunk=self.lm.chunk_size, dual=not self.kernels.independent,
        )
        self.plan = dataclasses.replace(plan, prefix_note=self.lm.prefix_note)
        return self.plan

    def fit_hyperparameters(self, X=None, y=None, cancel: CancelToken | None = None, **options):  # pragma: no cover
        """Return self refitted at hyperparameters chosen from the data (each subclass says how)."""
        raise NotImplementedError

    # ---------------------------------------------------------------- results
    def predict(self, Xs: torch.Tensor, *args, cancel: CancelToken | None = None, **kwargs):  # pragma: no cover
        """Return the predictive at Xs (GP: mean and variance; classifier: class indices)."""
        raise NotImplementedError

    def _is_fitted(self) -> bool:  # pragma: no cover - abstract
        raise NotImplementedError

    def _require_fitted(self) -> None:
        if not self._is_fitted():
            raise NotFittedError("Call fit(X, y) before predicting.")
