"""`LinearizedGP`: exact GP regression with the linearized network, f ~ GP(f(x; θ*), s²·J(x)J(x')ᵀ)."""

from __future__ import annotations

import dataclasses
import functools
import math
import os

import numpy as np
import torch
from torch import nn

from . import cg_variance, hyper, regression_hyper, weight_precond
from .checkpoint import Checkpoint, fingerprint, resumable_cg
from .distributed import SingleProcess
from .errors import SettingsError, ShapeError
from .gpytorch_bridge import GGNOperator, JacobianKernelOperator, MatvecCounter
from .linearized import DEFAULT_CHUNK_SIZE, DEFAULT_MEMORY_BUDGET
from .options import Outputs, choice, count, positive
from .params import ParamSpec
from .plan import PLAN_TEST_POINTS
from .predictor import LinearizedPredictor
from .progress import CancelToken, Reporter
from .solvers import (
    SolveInfo, cg, cho_solve, cholesky, clamp_variance, merge_infos, relative_residual, require_converged,
    solve_cg, solve_preconditioner,
)

OUTPUT_MODES = tuple(Outputs)  # kept for callers that list the choices
REFINE_MARGIN = 0.1  # weight CG's correction solve aims this far below cg_tol (0.5 left 0.96·cg_tol once)
# Where the expected number of CG-route variances comes from (said in the route's note): at the fit the
# planner's PLAN_TEST_POINTS per output, at a prediction every variance this fit was asked, that call included.
PLANNED, ASKED = "the planner's assumption", "asked of this fit so far"


class LinearizedGP(LinearizedPredictor):
    """Exact GP regression on a pretrained model's linearization, scikit-learn shaped.

    prior_var is s² (the prior variance of θ − θ*), noise is the Gaussian noise *variance* σ².
    `params` picks the linearized parameters ('all', 'last:K', module names). `space` and
    `solver` are 'auto' or forced; the chosen route is in :attr:`plan` after `fit`.
    `shard` (see :func:`~ntk_studio.core.distributed.init_distributed`) splits every data loop across
    torch.distributed ranks; `checkpoint` (a path or :class:`Checkpoint`) makes CG fits resumable.
    A CG solve that misses cg_tol raises SolverError; with `best_effort=True` it warns SolverWarning.
    `prefix_dtype` ('model' or 'engine') is the dtype a frozen prefix runs in (see :class:`.LinearizedModel`).
    """

    def __init__(
        self,
        model: nn.Module,
        params: ParamSpec = "all",
        prior_var: float = 1.0,
        noise: float = 0.1,
        space: str = "auto",
        solver: str = "auto",
        outputs: str = "full",
        dtype: torch.dtype = torch.float64,
        device: torch.device | str | None = None,
        memory_budget: int = DEFAULT_MEMORY_BUDGET,
        chunk_size: int = DEFAULT_CHUNK_SIZE,
        cg_tol: float = 1e-8,
        cg_max_iter: int = 1000,
        precond_rank: int = 64,
        structured: bool | None = None,
        shard: SingleProcess | None = None,
        checkpoint: Checkpoint | str | os.PathLike | None = None,
        best_effort: bool = False,
        prefix_dtype: str = "model",
        variance_rtol: float = cg_variance.VARIANCE_RTOL,
    ) -> None:
        self.outputs: Outputs = choice(Outputs, outputs, "outputs")
        self.noise = positive(noise, "noise")
        # Function-space CG variances stop once their bound from the true residual is this share of the variance.
        self.variance_rtol = positive(variance_rtol, "variance_rtol")
        self.precond_rank = count(precond_rank, "precond_rank", minimum=0)
        super().__init__(
            model, params=params, prior_var=prior_var, space=space, solver=solver, dtype=dtype, device=device,
            memory_budget=memory_budget, chunk_size=chunk_size, cg_tol=cg_tol, cg_max_iter=cg_max_iter,
            structured=structured, shard=shard, best_effort=best_effort, independent=self.outputs == Outputs.INDEPENDENT,
            prefix_dtype=prefix_dtype,
        )
        if checkpoint is not None and not isinstance(checkpoint, Checkpoint):
            checkpoint = Checkpoint(checkpoint, writer=self.lm.shard.is_writer)
        self.checkpoint = checkpoint
        self.variance_solve_info: SolveInfo | None = None
        # Absolute error bound of each variance of the last predict (function-space CG route; None elsewhere).
        self.variance_error_bound: torch.Tensor | None = None
        self._state: dict = {}

    # ------------------------------------------------------------------ fitting
    def _prepare_data(self, X: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, bool]:
        X = self._inputs(X)
        y = torch.as_tensor(y).to(self.lm.device, self.lm.dtype).clone()
        vector = y.dim() == 1
        Y = y.unsqueeze(-1) if vector else y
        if Y.dim() != 2 or Y.shape[0] != X.shape[0]:
            raise ShapeError(f"y must have shape (n,) or (n, K) with n = {X.shape[0]}; got {tuple(y.shape)}.")
        if not torch.isfinite(Y).all() or (X.is_floating_point() and not torch.isfinite(X).all()):
            raise ShapeError("X and y must be finite: remove or impute NaN/inf rows first.")
        return X, Y, vector

    def _fit_data(self, X: torch.Tensor, y: torch.Tensor, rep: Reporter) -> LinearizedGP:
        X, Y, vector = self._prepare_data(X, y)
        rep.emit("forward", 0.0, force=True, message="evaluating the pretrained model")
        f_X = self.lm.forward(X)
        if f_X.shape != Y.shape:
            raise ShapeError(f"The model has {f_X.shape[1]} outputs but y has {Y.shape[1]} columns.")
        n, K = Y.shape
        self._make_plan(X, n, K, rank=self.precond_rank)
        if self.outputs == Outputs.INDEPENDENT and self.plan.space == "weight":
            raise ShapeError("Independent outputs are solved in function space: pass space='function'.")
        self._state = {"X": X, "Y": Y, "f_X": f_X, "r": (Y - f_X).reshape(-1), "vector": vector}
        if self.plan.space == "function" and self.plan.solver == "cg":  # say how the variances will be answered
            route = self._variance_route(PLAN_TEST_POINTS * K, PLANNED)
            self.plan = dataclasses.replace(self.plan, reason=f"{self.plan.reason}; {route.note}")
        rep.emit("plan", 0.0, force=True, message=self.plan.describe())
        self._solve(rep)
        self._save_delta_theta()
        rep.emit("done", 1.0, force=True, residual=self.solve_info.residual, message="posterior ready")
        return self

    def _solve(self, rep: Reporter) -> None:
        getattr(self, f"_fit_{self.plan.space}_{self.plan.solver}")(rep)

    def _is_fitted(self) -> bool:
        return "delta_theta" in self._state

    def _system(self) -> torch.Tensor:
        A = self._state["Kxx"] * self.prior_var  # one new matrix: no identity, no temporaries
        A.diagonal().add_(self.noise)
        return A

    def _fit_function_cholesky(self, rep: Reporter) -> None:
        st = self._state
        if "Kxx" not in st:
            rep.emit("kernel", 0.0, force=True, message=f"building the kernel ({self.kernels.path})")
            rep.chunk_stage = "kernel"
            st["Kxx"] = self.kernels.matrix(st["X"])
            rep.chunk_stage = None
        L, alpha = self._cholesky_solve(self._system(), st["r"], rep)
        st.update(L=L, alpha=alpha)
        self._finish_function_space(alpha)

    def _cholesky_solve(self, A: torch.Tensor, rhs: torch.Tensor, rep: Reporter) -> tuple[torch.Tensor, torch.Tensor]:
        """Return (Cholesky factor of A, A⁻¹ rhs) and record the solve's residual and jitter."""
        rep.emit("factorize", 0.0, force=True)
        L, jitter = cholesky(A)  # warns JitterWarning when jitter was needed
        x = cho_solve(L, rhs)
        self.solve_info = SolveInfo("cholesky", A.shape[0], relative_residual(lambda v: A @ v, x, rhs), jitter)
        return L, x

    def _fit_function_cg(self, rep: Reporter) -> None:
        st = self._state
        counter = MatvecCounter(max_calls=self.cg_max_iter, stage="solve")
        op = self._train_operator(counter)
        st.pop("var_precond", None)  # built for the old prior and noise
        precond, factor, note = None, None, ""
        if "Kxx" in st and self.precond_rank > 0:
            # The variances' route, planned for the planner's test points, decides the fit's preconditioner:
            # the factor the variances will use (CG then converges at once), or a Nyström sketch of the stored
            # kernel (one matrix product) whose rank is chosen for the variance solves' many columns.
            route = self._variance_route(PLAN_TEST_POINTS * st["Y"].shape[1], PLANNED)
            if route.factored:
                rep.emit("precondition", 0.0, force=True, message="Cholesky factor of the stored kernel's system")
                factor = self._variance_factor(route.note)
            if factor is not None:
                precond = functools.partial(cho_solve, factor)
                note = "CG preconditioned by the stored kernel's Cholesky factor (kept for the variances)"
            else:
                if route.factored:
                    note = f"Nyström-preconditioned CG (the stored kernel's {st['var_factor_failed'][1]})"
                rep.emit("precondition", 0.0, force=True, message="Nyström sketch of the stored kernel")
                precond = self._variance_preconditioner(op._matmul, cg_variance.STORED_PRECOND_COLUMNS)
        rep.emit("solve", 0.0, force=True, message="preconditioned CG")
        alpha = self._cg(op, st["r"], counter, self.precond_rank, precond=precond)
        self.solve_info = dataclasses.replace(self.solve_info, note=note)
        st.update(alpha=alpha, op=op)
        self._finish_function_space(alpha)

    def _cg(self, op, rhs: torch.Tensor, counter: MatvecCounter, precond_rank: int, precond=None) -> torch.Tensor:
        """Return op⁻¹ rhs by the engine's CG; record products, iterations and true residual; raise if it missed.

        `precond` (weight space: the Nyström one) replaces the pivoted-Cholesky one of rank `precond_rank`.
        """
        if precond is None:
            precond = solve_preconditioner(op, precond_rank)
        self._state["precond"] = precond  # the variance solves reuse it
        if self.checkpoint is not None:
            x, converged, iterations = self._resumable_cg(op, rhs, precond, precond_rank)
        else:
            x, iterations, converged = cg(op._matmul, rhs.unsqueeze(-1), self.cg_tol, self.cg_max_iter, precond, self.lm.check_cancel)
        x = x[:, 0]
        products = counter.columns
        res = relative_residual(op.matmul, x, rhs)
        self.solve_info = SolveInfo("cg", products, res, converged=converged, iterations=iterations)
        require_converged(self.solve_info, "The training solve", self._cg_advice(), self.best_effort, self.cg_tol)
        return x

    def _cg_advice(self) -> str:
        precond = " or raise precond_rank" if self.plan is not None and self.plan.space == "function" else ""
        return (f"Raise the noise variance (now {self.noise:g}), raise cg_max_iter (now {self.cg_max_iter}), "
                f"loosen cg_tol{precond}, or pass best_effort=True to accept it.")

    def _resumable_cg(self, op, rhs: torch.Tensor, precond, precond_rank: int) -> tuple[torch.Tensor, bool, int]:
        """Return (x, converged, iterations) from CG that saves its state to, and resumes from, the checkpoint."""
        st = self._state
        # Inputs only, never derived sums: those differ in the last bits between rank layouts, and a
        # checkpoint written by N ranks must resume on M.
        key = fingerprint(
            self.plan.space, self.outputs, self.prior_var, self.noise, self.cg_tol, precond_rank,
            self.lm.subset.names, self.lm.dtype, st["X"], st["Y"], *self.lm.theta.values(), *self.lm.frozen.values(),
        )
        x, converged, iterations = resumable_cg(
            op._matmul, rhs.unsqueeze(-1), self.cg_tol, self.cg_max_iter, self.checkpoint, key,
            precond=precond, check=self.lm.check_cancel,
        )
        st["checkpoint_key"] = key
        return x, converged, iterations

    def _save_delta_theta(self) -> None:
        """Store the fitted Δθ in the checkpoint (a finished job's result survives a later crash)."""
        if self.checkpoint is not None and "checkpoint_key" in self._state:
            st = self._state
            self.checkpoint.save("delta_theta", st["checkpoint_key"], {"delta_theta": st["delta_theta"]}, force=True)

    def _train_operator(self, counter: MatvecCounter | None = None):
        """Return s²K + σ²I for CG: the stored kernel when it fits the memory budget, else matrix-free."""
        st = self._state
        Kxx = self._stored_kernel()
        if Kxx is not None:
            K = cg_variance.StoredKernel(Kxx)
            K.counter, K.lm = counter, self.lm
        else:
            K = JacobianKernelOperator(
                st["X"], st["X"], lm=self.lm, independent=self.outputs == "independent", counter=counter,
                diag_fn=self.kernels.diag,
            )
        diag = torch.full((K.shape[0],), self.noise, dtype=self.lm.dtype, device=self.lm.device)
        return (K * self.prior_var).add_diagonal(diag)

    def _stored_kernel(self) -> torch.Tensor | None:
        """Return the training kernel as a dense matrix if it fits the memory budget (filled once), else None.

        One matrix product per CG step instead of a vjp and a jvp over the data; a run split across
        ranks stays matrix-free (each rank holds its rows only).
        """
        st = self._state
        if "Kxx" in st:
            return st["Kxx"]
        n, K = st["Y"].shape
        self.kernels._decide(st["X"])
        need = cg_variance.stored_kernel_bytes(n, K, self.lm.num_params, torch.finfo(self.lm.dtype).bits // 8,
                                               self.kernels.use_structured)
        if self.lm.shard.world_size > 1 or need > self.memory_budget:
            return None
        st["Kxx"] = cg_variance.fill_kernel(self.kernels, st["X"], K)
        return st["Kxx"]

    def _finish_function_space(self, alpha: torch.Tensor) -> None:
        st = self._state
        n, K = st["Y"].shape
        a = alpha.reshape(n, K)
        if self.outputs == "independent":
            eye = torch.eye(K, dtype=self.lm.dtype, device=self.lm.device)
            st["delta_theta"] = self.prior_var * self.lm.vjp(st["X"], a.unsqueeze(0) * eye.view(K, 1, K))
        else:
            st["delta_theta"] = self.prior_var * self.lm.vjp(st["X"], a)

    def _weight_system(self) -> torch.Tensor:
        G = self._state["G"]
        A = G.clone()
        A.diagonal().add_(self.noise / self.prior_var)
        return A

    def _fit_weight_cholesky(self, rep: Reporter) -> None:
        st = self._state
        if "G" not in st:
            rep.emit("ggn", 0.0, force=True, message="accumulating JᵀJ")
            rep.chunk_stage = "ggn"
            st["G"] = self.lm.ggn_matrix(st["X"])
            st["b"] = self.lm.vjp(st["X"], st["r"].reshape(st["Y"].shape))
            rep.chunk_stage = None
        L, dtheta = self._cholesky_solve(self._weight_system(), st["b"], rep)
        st.update(Lw=L, delta_theta=dtheta)

    def _fit_weight_cg(self, rep: Reporter) -> None:
        st = self._state
        st["b"] = self.lm.vjp(st["X"], st["r"].reshape(st["Y"].shape))
        counter = MatvecCounter(max_calls=self.cg_max_iter, stage="solve")
        lam = self.noise / self.prior_var
        ggn = GGNOperator(st["X"], lm=self.lm, counter=counter)
        op = ggn.add_diagonal(torch.full((self.lm.num_params,), lam, dtype=self.lm.dtype, device=self.lm.device))
        precond = None
        if self.precond_rank > 0:
            rep.emit("precondition", 0.0, force=True, message=f"rank-{self.precond_rank} Nyström sketch of JᵀJ")
            sketch = weight_precond.nystrom(ggn._matmul, self.lm.num_params, self.precond_rank, self.lm.dtype, self.lm.device)
            precond = sketch.preconditioner(lam)
        rep.emit("solve", 0.0, force=True, message="preconditioned CG on the GGN" if precond else "CG on the GGN")
        dtheta = self._cg(op, st["b"], counter, 0, precond=precond)
        st.update(op_w=op, precond_w=precond, delta_theta=self._refine_to_dual(op, dtheta, precond, counter))

    def _refine_to_dual(self, op, dtheta: torch.Tensor, precond, counter: MatvecCounter) -> torch.Tensor:
        """Return Δθ after one correction solve aimed at the function-space residual cg_tol (as function CG meets).

        With α̂ = (r − JΔθ)/λ, (JJᵀ + λI)α̂ − r = J·(b − (JᵀJ + λI)Δθ)/λ: the weight residual seen through J.
        When the weight residual met cg_tol·‖b‖, this one was 170–31,000× larger on the MLPs measured (the
        mean then erred ~20× more than function-space CG's at the same cg_tol). One correction solve with
        the relative tolerance REFINE_MARGIN·cg_tol/(that residual) closes the gap; it is one step, not a
        loop. :attr:`solve_info` stays the main (checkpointed) solve's, so a resumed fit reports the work of
        a fresh one; the correction's SolveInfo is ``_state["refine_info"]``, the residual reached
        ``_state["dual_residual"]``.
        """
        st, lam = self._state, self.noise / self.prior_var
        r_norm = float(st["r"].norm()) or 1.0

        def dual_residual(x: torch.Tensor) -> tuple[float, torch.Tensor]:
            res = st["b"] - op.matmul(x)
            return float(self.lm.jvp(st["X"], res).norm()) / (lam * r_norm), res

        dual, res = dual_residual(dtheta)
        st["refine_info"] = None
        if dual > self.cg_tol:
            tol = max(REFINE_MARGIN * self.cg_tol / dual, torch.finfo(self.lm.dtype).eps)
            step, info = solve_cg(op._matmul, res, tol, self.cg_max_iter, precond=precond, check=self.lm.check_cancel)
            st["refine_info"] = info
            new_dual, _ = dual_residual(dtheta + step)
            if new_dual < dual:  # not at the rounding floor already
                dtheta, dual = dtheta + step, new_dual
        # solve_info stays the checkpointed main solve (a resumed fit reports the same work), with the final residual.
        self.solve_info = dataclasses.replace(self.solve_info, residual=relative_residual(op.matmul, dtheta, st["b"]))
        st["dual_residual"] = dual
        return dtheta

    # ---------------------------------------------------------------- prediction
    def _require_fit(self) -> dict:
        self._require_fitted()
        return self._state

    @property
    def delta_theta(self) -> torch.Tensor:
        """Return Δθ, shape (P,) (or (K, P) for independent outputs): mean(x) = f(x) + J(x) Δθ."""
        return self._require_fit()["delta_theta"]

    def predict_mean(self, Xs: torch.Tensor) -> torch.Tensor:
        """Return the posterior mean f(x) + J(x)Δθ, shape (m,) or (m, K)."""
        st = self._require_fit()
        Xs = self.lm.prepare(Xs)
        mean = self.lm.forward(Xs)
        dt = st["delta_theta"]
        if dt.dim() == 2:
            mean = mean + self.lm.jvp(Xs, dt).diagonal(dim1=0, dim2=2)
        else:
            mean = mean + self.lm.jvp(Xs, dt)
        return mean[:, 0] if st["vector"] else mean

    def predict(
        self, Xs: torch.Tensor, include_noise: bool = False, cancel: CancelToken | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Return (posterior mean, posterior variance), each (m,) or (m, K); noise added on request.

        With `cancel`, every data chunk (and CG product) checks the token and raises Cancelled.
        CG variance solves are reported in :attr:`variance_solve_info` and raise like the fit's. On the
        function-space CG route all test points of a chunk are one block solve, each variance has an
        absolute error bound from its true residual in :attr:`variance_error_bound` (same shape), and
        ``variance_solve_info.max_relative_error_bound`` is the largest relative one (≤ variance_rtol
        when converged).
        """
        st = self._require_fit()
        Xs = self.lm.prepare(Xs)
        self._variance_infos: list[SolveInfo] = []
        self._variance_bounds: list[torch.Tensor] = []
        if self.plan.space == "function" and self.plan.solver == "cg":
            # The expected number of variances is what this fit has been asked so far, this call included.
            st["variance_columns"] = st.get("variance_columns", 0) + Xs.shape[0] * st["Y"].shape[1]
            self._variance_route_now = self._variance_route(st["variance_columns"], ASKED)
        with self._reporting(self._reporter(cancel)):
            mean = self.predict_mean(Xs)
            parts = [self._variance_chunk(Xs[s]) for s in self.lm.chunks(Xs.shape[0])]
        if self._variance_infos:
            self.variance_solve_info = merge_infos(self._variance_infos)
        self.variance_error_bound = None
        if self._variance_bounds:
            bound = torch.cat(self._variance_bounds)
            self.variance_error_bound = bound[:, 0] if st["vector"] else bound
        var = clamp_variance(torch.cat([v for v, _ in parts]), torch.cat([p for _, p in parts]))
        if include_noise:
            var = var + self.noise
        return mean, (var[:, 0] if st["vector"] else var)

    def _variance_cg(self, op, B: torch.Tensor, precond) -> torch.Tensor:
        W, info = solve_cg(op._matmul, B, self.cg_tol, self.cg_max_iter, precond=precond, check=self.lm.check_cancel)
        self._variance_infos.append(info)
        require_converged(info, "A predictive-variance solve", self._cg_advice(), self.best_effort, self.cg_tol)
        return W

    def _variance_chunk(self, Xc: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Return (posterior variance, prior variance) of a chunk of test points, each (m, K)."""
        st, s2, plan = self._state, self.prior_var, self.plan
        K = st["Y"].shape[1]
        m = Xc.shape[0]
        if plan.space == "function":
            prior = s2 * self.kernels.diag(Xc)  # (m, K)
            if plan.solver == "cg":
                return self._bounded_variances(self._cross_kernel(Xc), prior).reshape(m, K), prior
            Kx = self.kernels.matrix(Xc, st["X"]).T
            V = torch.linalg.solve_triangular(st["L"], Kx, upper=False)
            corr = (V * V).sum(0)
            return prior - s2 * s2 * corr.reshape(m, K), prior
        J = self.lm.jacobian(Xc).reshape(m * K, -1).T  # (P, m·K)
        prior = s2 * (J * J).sum(0).reshape(m, K)
        if plan.solver == "cholesky":
            V = torch.linalg.solve_triangular(st["Lw"], J, upper=False)
            quad = (V * V).sum(0)
        else:
            quad = (J * self._variance_cg(st["op_w"], J, st.get("precond_w"))).sum(0)
        return self.noise * quad.reshape(m, K), prior

    def _bounded_variances(self, Kx: torch.Tensor, prior: torch.Tensor) -> torch.Tensor:
        """Return the variances of the columns of Kx = K(X, x*) by the factored route or one block solve; record bounds and the solve."""
        st = self._state
        op = st["op"]
        itemsize = torch.finfo(self.lm.dtype).bits // 8
        matmul = op._matmul if "Kxx" in st else cg_variance.column_blocked(op._matmul, self.lm.num_params, itemsize)
        route = self._variance_route_now
        factor = self._variance_factor(route.note) if route.factored else None
        if factor is not None:
            # W = A⁻¹K from the factor; its true residual (one product) gives the same bound as CG's, and CG
            # preconditioned by the factor continues any column the factor's rounding leaves short.
            precond, start = functools.partial(cho_solve, factor), cho_solve(factor, Kx)
        else:
            if route.factored:  # the factorization failed just now: say so, and solve by block CG
                route = self._variance_route_now = self._variance_route(st["variance_columns"], ASKED)
            if "var_precond" not in st:  # built once per fit, for every chunk of test points
                self._variance_preconditioner(matmul, Kx.shape[1])
            precond, start = st["var_precond"], None
        var, err, info = cg_variance.bounded_variances(
            matmul, Kx, prior.reshape(-1), self.prior_var, self.noise, self.variance_rtol, self.cg_max_iter,
            precond, self.lm.check_cancel, tol=self.cg_tol, start=start,
        )
        info = dataclasses.replace(info, solver="cholesky" if factor is not None else "cg", note=route.note)
        self._variance_infos.append(info)
        self._variance_bounds.append(err.reshape(prior.shape))
        require_converged(info, "A predictive-variance solve", self._cg_advice() + " Or raise variance_rtol "
                          f"(now {self.variance_rtol:g}; bound reached {info.max_relative_error_bound:.1e}).",
                          self.best_effort, self.cg_tol)
        return var

    def _variance_preconditioner(self, matmul, columns: int):
        """Return (and keep for the variance solves) the Nyström preconditioner of s²K + σ²I; matmul applies it."""
        st = self._state
        st["var_precond"], st["var_precond_rank"] = cg_variance.variance_preconditioner(
            lambda V: matmul(V) - self.noise * V, st["Y"].numel(), self.noise, columns, self.lm.dtype, self.lm.device,
            start=max(self.precond_rank, cg_variance.VARIANCE_PRECOND_START),
        )
        return st["var_precond"]

    def _variance_route(self, columns: int, basis: str) -> cg_variance.VarianceRoute:
        """Return how the function-space CG route answers `columns` variances (:func:`.cg_variance.variance_route`).

        A factor already made for the current kernel, s² and σ² is used whatever the count (its cost is
        paid); a sketch already built is not counted again. `basis` says where `columns` came from.
        """
        st = self._state
        n, K = st["Y"].shape
        key = self._factor_key()
        held = self._keyed("var_factor", key)
        if held is not None:
            return cg_variance.VarianceRoute(True, held[2])
        failed = self._keyed("var_factor_failed", key)
        itemsize = torch.finfo(self.lm.dtype).bits // 8
        self.kernels._decide(st["X"])
        stored = cg_variance.stored_kernel_bytes(n, K, self.lm.num_params, itemsize, self.kernels.use_structured)
        return cg_variance.variance_route(
            n * K, columns, itemsize, self.memory_budget, stored, self.lm.shard.world_size, self.cg_tol,
            max(self.precond_rank, cg_variance.VARIANCE_PRECOND_START),
            sketched_rank=st.get("var_precond_rank") if "var_precond" in st else None,
            failed=failed[1] if failed is not None else "", basis=basis,
        )

    def _keyed(self, name: str, key: tuple):
        """Return the state entry `name` ((key, …) tuple) when it was made for `key`, else None."""
        entry = self._state.get(name)
        return entry if entry is not None and _same_key(entry[0], key) else None

    def _factor_key(self) -> tuple:
        """Return what the variance factor depends on: the stored kernel (object and version), s², σ²."""
        Kxx = self._state.get("Kxx")
        return (Kxx, -1 if Kxx is None else Kxx._version, float(self.prior_var), float(self.noise))

    def _variance_factor(self, note: str) -> torch.Tensor | None:
        """Return the Cholesky factor of s²K + σ²I from the stored kernel, made once per key; None if it failed.

        Keyed on :meth:`_factor_key`: a new fit (new kernel), an in-place change of the kernel, or new s²
        or σ² (a hyperparameter search refits in place) makes a new one; the stale one is dropped first.
        `note` (the route's reason) is kept with it for the solve infos.
        """
        st = self._state
        key = self._factor_key()
        held = self._keyed("var_factor", key)
        if held is not None:
            return held[1]
        if key[0] is None or self._keyed("var_factor_failed", key) is not None:
            return None
        st.pop("var_factor", None)  # its memory goes before the new factor is made
        L, why = cg_variance.factor_system(st["Kxx"], self.prior_var, self.noise)
        if L is None:
            st["var_factor_failed"] = (key, why)
            return None
        st["var_factor"] = (key, L, note)
        return L

    def _cross_kernel(self, Xc: torch.Tensor) -> torch.Tensor:
        """Return K(X_train, Xc) of size (N, m·K) by the cheapest exact path the model and budget allow.

        The kernel builder (structured Linear-layer form, or per-sample Jacobians with the cached side
        fitting the memory budget) costs one pass over the data; the matrix-free fallback costs one
        vjp and one jvp over the training set per test column.
        """
        st = self._state
        n, K = st["Y"].shape
        X = st["X"]
        m = Xc.shape[0]
        if self.lm.shard.world_size == 1:
            self.kernels._decide(X)
            jac = K * self.lm.num_params * torch.finfo(self.lm.dtype).bits // 8
            if self.kernels.use_structured or n * jac <= self.memory_budget:
                return self.kernels.matrix(Xc, X).T.contiguous()  # caches the training side
            if m * jac <= self.memory_budget:
                return self.kernels.matrix(X, Xc)
        eye = torch.eye(m * K, dtype=self.lm.dtype, device=self.lm.device)
        return self.lm.kernel_matmul(X, Xc, eye, independent=self.outputs == "independent")

    # ------------------------------------------------------- marginal likelihood
    def log_marginal_likelihood(self) -> float:
        """Return log p(y | X, s², σ²), exact for Cholesky routes, GPyTorch's estimate for CG."""
        st = self._require_fit()
        r = st["r"]
        N = r.numel()
        if self.plan.solver == "cholesky" and self.plan.space == "function":
            quad = float(r @ st["alpha"])
            logdet = 2.0 * float(torch.log(st["L"].diagonal()).sum())
        elif self.plan.solver == "cholesky":
            lam = self.noise / self.prior_var
            P = st["G"].shape[0]
            quad = (float(r @ r) - float(st["b"] @ st["delta_theta"])) / self.noise
            logdet = N * math.log(self.noise) + 2.0 * float(torch.log(st["Lw"].diagonal()).sum()) - P * math.log(lam)
        else:
            with self.lm.shard.same_random_stream():  # stochastic probes must agree across ranks
                return hyper.gpytorch_mll(self, st) * N
        return -0.5 * (quad + logdet + N * math.log(2 * math.pi))

    def fit_hyperparameters(
        self, X: torch.Tensor | None = None, y: torch.Tensor | None = None, iters: int = 60,
        cancel: CancelToken | None = None, selection: str | None = None, groups=None,
        blocks: int = regression_hyper.BLOCKS, unlabelled: torch.Tensor | None = None,
    ) -> LinearizedGP:
        """Return self after maximizing the marginal likelihood over prior_var and noise, then refitting.

        `selection`: None (default) is 'shift' when `unlabelled` rows are given, else 'floor'. 'floor' keeps
        σ² ≥ 0.01 × var(y) (regression_hyper.noise_floor; the plain evidence drove σ² to 0.0013 on 10 sine
        points with true 0.01, 95 % coverage 0.64, see docs/calibration.md), 'evidence' is unconstrained,
        'map2' adds a weak log-normal prior (one decade) centred on the current values; 'blocked' takes the floor's values and multiplies both by
        a covariance scale τ ≥ 1 (same mean, every variance ×τ) chosen by the held-out NLL of blocks of
        rows that lie away from the rest: `groups` (one label per fitted row) when it has ≥ 2 groups, else
        `blocks` clusters in the linearized feature space (regression_hyper.covariance_scale). 'shift' scales
        the same way from one block aimed at `unlabelled` (inputs of rows without targets, where the model
        will be used): the half of the fitted rows that looks most like them, predicted from the other half;
        without `unlabelled` it is 'floor'.

        `cancel` is checked in every optimizer step (and every data chunk); a cancelled search
        raises Cancelled and leaves the previous fit and values in place. :attr:`hyper_info` records
        the start and the result.
        """
        if selection is None:
            selection = "shift" if unlabelled is not None and len(unlabelled) > 0 else "floor"
        if selection not in ("floor", "evidence", "map2", "blocked", "shift"):
            raise SettingsError(f"selection must be 'floor', 'evidence', 'map2', 'blocked' or 'shift'; got {selection!r}.")
        rep = self._reporter(cancel)
        if X is not None:
            if y is None:
                raise ShapeError("Pass both X and y, or neither to reuse the fitted data.")
            self._fit(X, y, rep)
        st = self._require_fit()
        exact = self.plan.solver == "cholesky"  # the CG route's evidence is a costly stochastic estimate
        start = {"prior_var": self.prior_var, "noise": self.noise,
                 "log_marginal_likelihood": self.log_marginal_likelihood() if exact else None}
        saved = (dict(st), self.solve_info)
        self.lm.reporter = rep  # every optimizer step and data chunk checks the token
        try:
            base = "floor" if selection in ("blocked", "shift") else selection
            if exact:
                found = hyper.fit_exact(self, st) if base == "evidence" else regression_hyper.fit_exact_selected(self, st, base)
            else:
                with self.lm.shard.same_random_stream():
                    found = hyper.fit_gpytorch(self, st, iters)
                if base == "floor":
                    found = (found[0], max(found[1], regression_hyper.noise_floor(st["Y"])))
            blocked = None
            if selection in ("blocked", "shift"):
                blocked = self._blocked_scale(found, groups, blocks, unlabelled if selection == "shift" else False)
            if blocked is not None:
                found = (blocked["cov_scale"] * found[0], blocked["cov_scale"] * found[1])
            self.prior_var, self.noise = found
            self._solve(rep)
        except BaseException:
            # A cancelled or failed search must not leave a half-updated posterior behind.
            self.prior_var, self.noise = start["prior_var"], start["noise"]
            self._state, self.solve_info = saved
            raise
        finally:
            self.lm.reporter = None
        self.hyper_info = {
            "selection": selection,
            "method": "exact evidence, L-BFGS" if exact else "GPyTorch evidence estimate, Adam",
            "start": start, "prior_var": self.prior_var, "noise": self.noise,
            "log_marginal_likelihood": self.log_marginal_likelihood() if exact else None,
        }
        if blocked is not None:
            self.hyper_info["method"] += ", σ² ≥ floor; then s², σ² ×τ by a held-out NLL"
            self.hyper_info.update(blocked, why=(
                f"floor evidence s² = {found[0] / blocked['cov_scale']:.3g}, σ² = {found[1] / blocked['cov_scale']:.3g}, "
                f"then both ×τ = {blocked['cov_scale']:.3g} by the held-out NLL of blocks ({blocked['blocked_by']})"
                + (" (τ at its floor 1: no wider intervals asked for)"
                   if blocked["cov_scale"] <= regression_hyper.SCALE_MIN else "")))
        return self

    def _blocked_scale(self, found: tuple[float, float], groups, blocks: int, unlabelled) -> dict:
        """Return the covariance scale τ of 'blocked' (unlabelled is False) or 'shift' and its record, at `found`."""
        st = self._state
        n, K = st["Y"].shape
        record = {"base_prior_var": found[0], "base_noise": found[1]}
        if unlabelled is not False and (unlabelled is None or len(unlabelled) == 0):
            return record | {"cov_scale": 1.0, "heldout_nll": None, "blocks": 0, "blocked_by": "no unlabelled rows given"}
        need = (n * K) ** 2 * 8 * 3  # the kernel, A⁻¹ and one copy, float64
        if "Kxx" not in st and need > self.memory_budget:
            raise SettingsError(f"selection 'blocked'/'shift' needs the {n * K} × {n * K} kernel of the fitted rows "
                                f"(~{need / 2**30:.1f} GiB) beyond memory_budget ({self.memory_budget / 2**30:.1f} GiB): "
                                "raise memory_budget or use 'floor'.")
        Kxx = st["Kxx"] if "Kxx" in st else self.kernels.matrix(st["X"])
        K1, r = Kxx.double().cpu().numpy(), st["r"].double().cpu().numpy()
        if unlabelled is not False:
            Xu = self._inputs(unlabelled)
            if len(Xu) > regression_hyper.SHIFT_MAX_UNLABELLED:
                Xu = Xu[np.linspace(0, len(Xu) - 1, regression_hyper.SHIFT_MAX_UNLABELLED).round().astype(int)]
            m = len(Xu)
            K_lu = regression_hyper.row_kernel(self.kernels.matrix(st["X"], Xu).double().cpu().numpy(), K, n, m)
            K_uu = regression_hyper.row_kernel(self.kernels.matrix(Xu).double().cpu().numpy(), K, m, m)
            held = regression_hyper.shift_folds(regression_hyper.row_kernel(K1, K, n, n), K_lu, K_uu)
            folds = np.repeat(held, K)
            tau, nll = regression_hyper.heldout_scale(K1, r, found[0], found[1], folds, folds == 1)
            return record | {"cov_scale": tau, "heldout_nll": nll, "blocks": 2, "unlabelled_rows": m,
                             "blocked_by": f"the {int(held.sum())} rows most like the {m} unlabelled rows"}
        try:
            folds = regression_hyper.row_folds(K1, K, groups, blocks)
        except ValueError as exc:
            raise ShapeError(f"groups: {exc}.") from exc
        tau, nll = regression_hyper.covariance_scale(K1, r, found[0], found[1], folds)
        by_groups = groups is not None and len(set(np.asarray(groups).tolist())) >= 2
        return record | {"cov_scale": tau, "heldout_nll": nll, "blocks": int(folds.max()) + 1,
                         "blocked_by": "the given groups" if by_groups else "feature-space clusters"}


def _same_key(a: tuple, b: tuple) -> bool:
    """Return whether two :meth:`LinearizedGP._factor_key` keys are equal (the kernel compared by identity)."""
    return a[0] is b[0] and a[1:] == b[1:]
