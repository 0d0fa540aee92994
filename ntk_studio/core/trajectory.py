"""The closed-form gradient-descent trajectory of the linearized model on squared error.

With L(θ) = ½ Σ_i ‖f_lin(x_i; θ) − y_i‖² and full-batch gradient descent of step η, the training
residual r = y − f obeys r_t = (I − ηK)^t r_0 with K = J Jᵀ on the training set (nK × nK), and

    f_t(x*) = f_0(x*) + K(x*, X) K⁻¹ (I − (I − ηK)^t) r_0          (discrete steps t)
    f_t(x*) = f_0(x*) + K(x*, X) K⁻¹ (I − e^{−ηKt}) r_0            (gradient flow, time ηt)

Both come from one eigendecomposition K = U Λ Uᵀ: the factor K⁻¹(I − …) is the eigenvalue function
g_t(λ) = (1 − (1 − ηλ)^t)/λ or (1 − e^{−ηλt})/λ, evaluated with log1p/expm1 so it tends to ηt as
ηλt → 0 without cancellation, and 1/λ at t = ∞. On the numerical null space (λ ≤ N·eps·λ_max) it is
set to 0, the pseudo-inverse: there Jᵀu = 0, so K(x*, X)u = 0 and any value is exact in exact
arithmetic, while 0 keeps roundoff in u from growing with t. At t = ∞ the prediction is the GP
posterior mean with noise → 0 (the minimum-norm interpolant when K is singular).
"""

from __future__ import annotations

import torch
from torch import nn

from . import options
from .errors import MemoryBudgetError, ShapeError, SolverError
from .kernels import KernelBuilder
from .linearized import DEFAULT_MEMORY_BUDGET, LinearizedModel
from .options import TrajectoryMode, choice, count, positive
from .params import ParamSpec
from .progress import CancelToken, Reporter

MODES = tuple(m.value for m in TrajectoryMode)  # kept for callers that list the choices
STABLE_LR_FACTOR = 2.0  # discrete gradient descent converges iff η < 2/λ_max
# λ_max is computed, not exact: a step within this relative margin of 2/λ_max counts as unstable
# (there the top mode would decay like (1 − 1e-9)^t, i.e. not at all in practice).
STABILITY_RTOL = 1e-9
EIGH_WORKSPACE = 3  # K, its eigenvectors and LAPACK's workspace: about three N × N matrices


class LinearizedTrajectory:
    """Predictions of the linearized model after t steps (or time t) of gradient descent on ½‖f − y‖².

    `lr` is the step η (default 1/λ_max, the fastest step for the top mode). In "flow" mode t is in
    units of η too (time ηt), so flow and discrete agree for small η. `params` picks the trained
    subset as everywhere else. The kernel is built once, in `dtype` (float64 by default); `cancel`
    stops that build (and `predict` takes its own token).
    """

    def __init__(
        self,
        model: nn.Module,
        X: torch.Tensor,
        y: torch.Tensor,
        params: ParamSpec = "all",
        lr: float | None = None,
        dtype: torch.dtype = torch.float64,
        mode: str = "discrete",
        device: torch.device | str | None = None,
        memory_budget: int = DEFAULT_MEMORY_BUDGET,
        cancel: CancelToken | None = None,
    ) -> None:
        self.mode = choice(TrajectoryMode, mode, "mode")
        self.lm = LinearizedModel(model, params, dtype=options.float_dtype(dtype), device=options.device(device))
        # The kernel build is the long part: every data chunk checks `cancel`.
        self.lm.reporter = Reporter(cancel=cancel) if cancel is not None else None
        try:
            self._build(X, y, lr, mode, count(memory_budget, "memory_budget"))
        finally:
            self.lm.reporter = None

    def _build(self, X: torch.Tensor, y: torch.Tensor, lr: float | None, mode: str, memory_budget: int) -> None:
        dtype = self.lm.dtype
        self.kernels = KernelBuilder(self.lm)
        # Own copies: the kernel builder caches the training Jacobian keyed on this tensor.
        self.X = self.lm.prepare(X).clone()
        y = torch.as_tensor(y).to(self.lm.device, dtype)
        self.vector = y.dim() == 1
        Y = y.unsqueeze(-1) if self.vector else y
        if Y.dim() != 2 or Y.shape[0] != self.X.shape[0]:
            raise ShapeError(f"y must have shape (n,) or (n, K) with n = {self.X.shape[0]}; got {tuple(y.shape)}.")
        if not torch.isfinite(Y).all():
            raise ShapeError("y must be finite: remove or impute NaN/inf rows first.")
        N = Y.numel()
        needed = EIGH_WORKSPACE * N * N * torch.finfo(dtype).bits // 8
        if needed > memory_budget:
            raise MemoryBudgetError(
                f"The trajectory needs the full {N} × {N} kernel and its eigenvectors (~{needed / 1e9:.1f} GB, "
                f"budget {memory_budget / 1e9:.1f} GB): use fewer training points or raise memory_budget."
            )
        f0 = self.lm.forward(self.X)
        if f0.shape != Y.shape:
            raise ShapeError(f"The model has {f0.shape[1]} outputs but y has {Y.shape[1]} columns.")
        self.K = Y.shape[1]
        Kxx = self.kernels.matrix(self.X)
        self.lm.check_cancel()
        # eigh reads one triangle; symmetrizing first makes the result independent of which.
        lam, self.U = torch.linalg.eigh((Kxx + Kxx.T) / 2)
        self.lambda_max = float(lam[-1].clamp_min(0))
        if self.lambda_max == 0.0:
            raise SolverError("The kernel is zero: no chosen parameter affects the outputs on these inputs.")
        self.null = lam <= N * torch.finfo(dtype).eps * self.lambda_max
        self.eigenvalues = torch.where(self.null, torch.zeros_like(lam), lam)
        self.r0 = (Y - f0).reshape(-1)
        self.coef = self.U.T @ self.r0  # r_0 in the eigenbasis
        self.lr = positive(lr, "lr") if lr is not None else 1.0 / self.lambda_max
        if mode == "discrete" and self.lr * self.lambda_max >= STABLE_LR_FACTOR * (1 - STABILITY_RTOL):
            raise SolverError(
                f"lr={self.lr:.6g} makes discrete gradient descent diverge: the kernel's largest eigenvalue is "
                f"λ_max={self.lambda_max:.6g}, so the step must be below 2/λ_max={self.max_stable_lr:.6g} "
                f"(1/λ_max={1.0 / self.lambda_max:.6g} is the fastest stable choice)."
            )

    @property
    def max_stable_lr(self) -> float:
        """Return 2/λ_max, the (exclusive) largest stable discrete step."""
        return STABLE_LR_FACTOR / self.lambda_max

    @staticmethod
    def lr_for_mse(lr: float, n_values: int) -> float:
        """Return the η equal to full-batch GD with step `lr` on the mean of n_values = n·K squared errors."""
        # mean((f − y)²) = (2/N)·½Σ(f − y)², so its gradient step lr is a step 2·lr/N on our loss.
        return 2.0 * lr / n_values

    def _times(self, t) -> tuple[torch.Tensor, bool]:
        scalar = not torch.is_tensor(t) or t.dim() == 0
        if torch.is_tensor(t) and t.dim() > 1:
            raise ShapeError(f"t must be a number or a 1-D tensor of times; got shape {tuple(t.shape)}.")
        ts = torch.as_tensor(t, dtype=self.lm.dtype, device=self.lm.device).reshape(-1)
        if torch.isnan(ts).any() or (ts < 0).any():
            raise ShapeError("Times must be ≥ 0 (float('inf') gives the converged solution).")
        if self.mode == "discrete" and not torch.where(torch.isinf(ts), 0, ts - ts.round()).eq(0).all():
            raise ShapeError("Discrete gradient descent takes whole steps: pass integer t, or use mode='flow'.")
        return ts, scalar

    def _decay_and_gain(self, ts: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Return ((1 − ηλ)^t or e^{−ηλt}, g_t(λ)), both (T, N), with the null space handled exactly."""
        lam = self.eigenvalues.unsqueeze(0)
        a = self.lr * lam  # ηλ ∈ [0, 2)
        t = ts.unsqueeze(1)
        null = self.null.unsqueeze(0)
        if self.mode == "flow":
            log_decay = -a * t
        else:
            # For ηλ < 1, (1 − ηλ)^t = exp(t·log1p(−ηλ)) keeps tiny ηλ exact; for 1 ≤ ηλ < 2 the base
            # is negative (oscillation) and O(1), so a plain power of the integer t is accurate.
            log_decay = t * torch.log1p(-a.clamp(max=0.5))
        small = a < 0.5 if self.mode == "discrete" else torch.ones_like(a, dtype=torch.bool)
        big_decay = torch.pow(1 - a, t)
        decay = torch.where(small, torch.exp(log_decay), big_decay)
        one_minus = torch.where(small, -torch.expm1(log_decay), 1 - big_decay)
        # Where a and t are both nonzero the products are finite; inf·0 only occurs on the null space.
        safe_lam = torch.where(null, torch.ones_like(lam), lam)
        gain = torch.where(null, torch.zeros_like(one_minus), one_minus / safe_lam)
        decay = torch.where(null, torch.ones_like(decay), decay)
        return decay, gain

    def train_residual(self, t) -> float | torch.Tensor:
        """Return ‖y − f_t(X)‖ on the training set: a float for scalar t, else a (T,) tensor."""
        ts, scalar = self._times(t)
        decay, _ = self._decay_and_gain(ts)
        # U is orthogonal, so the norm is the norm of the decayed coefficients.
        norms = torch.linalg.vector_norm(decay * self.coef.unsqueeze(0), dim=1)
        return float(norms[0]) if scalar else norms

    def predict(self, Xs: torch.Tensor, t, cancel: CancelToken | None = None) -> torch.Tensor:
        """Return f_t(Xs): (m,) or (m, K) for scalar t, (T, m) or (T, m, K) for a 1-D tensor of times.

        With `cancel`, every chunk of test points checks the token and raises Cancelled.
        """
        ts, scalar = self._times(t)
        _, gain = self._decay_and_gain(ts)
        W = self.U @ (gain * self.coef.unsqueeze(0)).T  # (N, T): K⁻¹(I − …) r_0 for every time
        Xs = self.lm.prepare(Xs)
        parts = []
        self.lm.reporter = Reporter(cancel=cancel) if cancel is not None else None
        try:
            for s in self.lm.chunks(Xs.shape[0]):
                f0 = self.lm.forward(Xs[s]).reshape(-1, 1)
                parts.append((f0 + self.kernels.matrix(Xs[s], self.X) @ W).T.reshape(len(ts), -1, self.K))
        finally:
            self.lm.reporter = None
        out = torch.cat(parts, dim=1)
        if self.vector:
            out = out[..., 0]
        return out[0] if scalar else out
