"""The two routes of linearized classification: Newton steps for the MAP and the Laplace posterior.

Both routes minimise the same convex objective over the weight offset Δθ (logits F = F0 + JΔθ),

    L(Δθ) = Σ_i CE(softmax(F_i), y_i) + ‖Δθ‖² / (2 s²),

and take the same Newton step Δθ_new = H⁻¹ Jᵀ b with H = JᵀΛJ + I/s², b = ΛJΔθ + Y − p and
Λ_i = diag(p_i) − p_i p_iᵀ (the GGN of softmax cross-entropy, exact Hessian here because the logits
are linear in Δθ). Weight space solves with H (dense Cholesky or CG on `ggn_matvec`); function space
writes Δθ = s² Jᵀ a, h = F − F0 = s² K a with K = J Jᵀ, and uses Rasmussen & Williams' symmetric form
(Alg. 3.1/3.3, generalised to full C×C blocks) in increment form: Δa = −(r − S B⁻¹ S s²K r) with
r = p − Y + a, B = I + s² S K S, S = Λ^{1/2}. Λ is singular (softmax is shift invariant), so Λ⁻¹
never appears. Each route reports the weight-space
gradient g = Jᵀ(p − Y) + Δθ/s² so both stop on the same criterion.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from .kernels import KernelBuilder
from .linearized import LinearizedModel
from .solvers import SolveInfo, cg, cho_solve, cholesky, require_converged, solve_cg

CG_ADVICE = "Raise cg_max_iter, loosen cg_tol, or use solver='cholesky' if the matrix fits the memory budget."


def softmax_stats(F: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Return (p, Λ): softmax probabilities (n, C) and per-sample Hessians diag(p) − ppᵀ (n, C, C)."""
    p = torch.softmax(F, dim=-1)
    return p, torch.diag_embed(p) - p.unsqueeze(-1) * p.unsqueeze(-2)


def sym_sqrt(M: torch.Tensor) -> torch.Tensor:
    """Return the symmetric PSD square root of each (C, C) block of M (n, C, C)."""
    w, Q = torch.linalg.eigh(M)
    return (Q * w.clamp_min(0.0).sqrt().unsqueeze(-2)) @ Q.transpose(-1, -2)


def block_apply(M: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Return blockdiag(M) v for M (n, C, C) and v (n·C,) or (n·C, c), sample-major rows."""
    n, C, _ = M.shape
    if v.dim() == 1:
        return torch.einsum("iab,ib->ia", M, v.reshape(n, C)).reshape(-1)
    return torch.einsum("iab,ibc->iac", M, v.reshape(n, C, -1)).reshape(n * C, -1)


def point_blocks(A: torch.Tensor, B: torch.Tensor, C: int) -> torch.Tensor:
    """Return the per-point (C, C) blocks of AᵀB for A, B of shape (rows, m·C): (m, C, C)."""
    return torch.einsum("kia,kib->iab", A.reshape(A.shape[0], -1, C), B.reshape(B.shape[0], -1, C))


class _Route:
    """Shared plumbing: data, one-hot targets, prior variance, solver choice and cancel checks."""

    def __init__(self, lm: LinearizedModel, X: torch.Tensor, Y: torch.Tensor, s2: float, dense: bool,
                 cg_tol: float, cg_max_iter: int, best_effort: bool = False) -> None:
        self.lm, self.X, self.Y, self.s2, self.dense = lm, X, Y, s2, dense
        self.n, self.C = Y.shape
        self.cg_tol, self.cg_max_iter, self.best_effort = cg_tol, cg_max_iter, best_effort
        self.cg_iterations = 0  # inner CG iterations over the whole fit
        self.variance_solve_info: SolveInfo | None = None  # the last covariance solve's report

    def _newton_cg(self, matvec, B: torch.Tensor, tol: float) -> torch.Tensor:
        """Return an inexact-Newton solve: its forcing tolerance may be missed, the outer loop decides.

        No true-residual product here (it would cost one more pass per step): the Newton loop's
        own gradient test is the convergence check that counts.
        """
        x, it, _ = cg(matvec, B, tol, self.cg_max_iter, check=self.lm.check_cancel)
        self.cg_iterations += it
        return x

    def _variance_cg(self, matvec, B: torch.Tensor) -> torch.Tensor:
        """Return the covariance solve to cg_tol; record it and raise (or warn) when it misses."""
        x, info = solve_cg(matvec, B, self.cg_tol, self.cg_max_iter, check=self.lm.check_cancel)
        self.variance_solve_info = info
        require_converged(info, "The Laplace covariance solve", CG_ADVICE, self.best_effort, self.cg_tol)
        return x


class WeightRoute(_Route):
    """Newton over Δθ with H = JᵀΛJ + I/s²: dense Cholesky (P small) or CG on GGN products."""

    def __init__(self, lm, X, Y, s2, dense, cg_tol, cg_max_iter, best_effort, cache_jacobian: bool) -> None:
        super().__init__(lm, X, Y, s2, dense, cg_tol, cg_max_iter, best_effort)
        P = lm.num_params
        self.dtheta = torch.zeros(P, dtype=lm.dtype, device=lm.device)
        # Dense J is reused by every Newton step when it fits the budget; otherwise it is streamed.
        self.J = lm.jacobian(X) if dense and cache_jacobian else None

    def _Jv(self, v: torch.Tensor) -> torch.Tensor:
        return self.J @ v if self.J is not None else self.lm.jvp(self.X, v)

    def _ggn(self, lam: torch.Tensor) -> torch.Tensor:
        """Return the dense H = JᵀΛJ + I/s² (P, P)."""
        H = self.lm.ggn_matrix(self.X, lam, jacobian=self.J)  # this rank's rows, all-reduced
        H.diagonal().add_(1.0 / self.s2)
        return H

    def _hess_mv(self, lam: torch.Tensor) -> Callable[[torch.Tensor], torch.Tensor]:
        return lambda V: self.lm.ggn_matvec(self.X, V.T, weights=lam).T + V / self.s2

    def gradient_norm(self, p: torch.Tensor) -> float:
        """Return ‖g‖ for g = Jᵀ(p − Y) + Δθ/s² (one vjp) and keep g for the step."""
        R = p - self.Y
        JtR = self.J.reshape(-1, self.J.shape[-1]).T @ R.reshape(-1) if self.J is not None else self.lm.vjp(self.X, R)
        self.g = JtR + self.dtheta / self.s2
        return float(self.g.norm())

    def direction(self, p: torch.Tensor, lam: torch.Tensor, forcing: float):
        """Return (logit change dF (n, C), prior quadratic (q0, q1, q2)) for the Newton direction."""
        if self.dense:
            L, _ = cholesky(self._ggn(lam), "the Newton Hessian")
            d = -cho_solve(L, self.g)
        else:
            d = self._newton_cg(self._hess_mv(lam), -self.g.unsqueeze(-1), forcing)[:, 0]
        self.d = d
        s2 = self.s2
        return self._Jv(d), (float(self.dtheta @ self.dtheta) / s2, float(self.dtheta @ d) / s2, float(d @ d) / s2)

    def accept(self, t: float) -> None:
        """Move Δθ by t times the last direction."""
        self.dtheta = self.dtheta + t * self.d

    def prior_term(self) -> float:
        """Return ‖Δθ‖²/(2s²)."""
        return float(self.dtheta @ self.dtheta) / (2 * self.s2)

    def finalize(self, lam: torch.Tensor) -> None:
        """Freeze the Laplace posterior at the MAP: precision H = JᵀΛJ + I/s² (factored when dense)."""
        self.lam = lam
        if self.dense:
            self.L, self.jitter = cholesky(self._ggn(lam), "the Laplace precision")
        self.J = None  # the training Jacobian is not needed for predictions

    @property
    def delta_theta(self) -> torch.Tensor:
        """Return the MAP offset Δθ (P,)."""
        return self.dtheta

    def covariance(self, Xc: torch.Tensor) -> torch.Tensor:
        """Return the logit covariances J* H⁻¹ J*ᵀ per test point, (m, C, C)."""
        Js = self.lm.jacobian(Xc)
        Jt = Js.reshape(-1, Js.shape[-1]).T  # (P, m·C)
        if self.dense:
            V = torch.linalg.solve_triangular(self.L, Jt, upper=False)
            return point_blocks(V, V, self.C)
        W = self._variance_cg(self._hess_mv(self.lam), Jt)
        return point_blocks(Jt, W, self.C)

    def log_det(self) -> float:
        """Return log det(I + s² JᵀΛJ) = P log s² + log det H (dense route only)."""
        return self.lm.num_params * math.log(self.s2) + 2.0 * float(torch.log(self.L.diagonal()).sum())


class FunctionRoute(_Route):
    """Newton over a (Δθ = s² Jᵀ a) in the nC-dimensional span, with dense K or kernel products."""

    def __init__(self, lm, X, Y, s2, dense, cg_tol, cg_max_iter, best_effort, kernels: KernelBuilder) -> None:
        super().__init__(lm, X, Y, s2, dense, cg_tol, cg_max_iter, best_effort)
        N = self.n * self.C
        self.a = torch.zeros(N, dtype=lm.dtype, device=lm.device)
        self.h = torch.zeros_like(self.a)  # h = s² K a = F − F0, kept exactly in step with a
        self.kernels = kernels
        self.K = kernels.matrix(X) if dense else None
        # Per-sample blocks K_ii bound λmax(s² S K S) ≤ s² Σ_i tr(Λ_i K_ii), which sets the CG forcing.
        self.K_blocks = None if dense else lm.ntk_diag(X, block=True)

    def _Kmv(self, V: torch.Tensor) -> torch.Tensor:
        return self.K @ V if self.K is not None else self.lm.kernel_matmul(self.X, self.X, V)

    def _B(self, S: torch.Tensor) -> torch.Tensor:
        """Return the dense B = I + s² S K S (nC, nC); eigenvalues ≥ 1, so no jitter is needed."""
        SK = block_apply(S, self.K)
        B = self.s2 * block_apply(S, SK.T).T
        B.diagonal().add_(1.0)
        return B

    def _B_mv(self, S: torch.Tensor) -> Callable[[torch.Tensor], torch.Tensor]:
        return lambda V: V + self.s2 * block_apply(S, self._Kmv(block_apply(S, V)))

    def gradient_norm(self, p: torch.Tensor) -> float:
        """Return ‖g‖ = √(rᵀKr) for g = Jᵀ r, r = p − Y + a; keeps r and Kr for the step."""
        self.r = (p - self.Y).reshape(-1) + self.a
        self.Kr = self._Kmv(self.r)
        return float((self.r @ self.Kr).clamp_min(0.0).sqrt())

    def direction(self, p: torch.Tensor, lam: torch.Tensor, forcing: float):
        """Return (logit change dF (n, C), prior quadratic (q0, q1, q2)) for the Newton direction.

        The step is solved in increment form, Δa = −(I + ΛK̃)⁻¹ r = −(r − S B⁻¹ S K̃ r): its
        right-hand side scales with the gradient, so an inexact CG solve still gives an inexact-Newton
        step (the R&W form for a_new does not). A B-residual `res` is the weight-space residual
        H d + g = Jᵀ S res, so ‖H d + g‖ ≤ λmax(s² S K S)·tol·‖g‖: dividing the forcing by the trace
        bound of λmax keeps the same guarantee as weight-space Newton-CG.
        """
        S = sym_sqrt(lam)
        rhs = self.s2 * block_apply(S, self.Kr)
        if self.dense:
            L, _ = cholesky(self._B(S), "the Newton system I + s²SKS")
            z = cho_solve(L, rhs)
        else:
            bound = self.s2 * float(torch.einsum("iab,iba->", lam, self.K_blocks))
            z = self._newton_cg(self._B_mv(S), rhs.unsqueeze(-1), forcing / max(1.0, bound))[:, 0]
        self.da = block_apply(S, z) - self.r
        self.du = self.s2 * self._Kmv(self.da)
        q = (float(self.a @ self.h), float(self.da @ self.h), float(self.da @ self.du))
        return self.du.reshape(self.n, self.C), q

    def accept(self, t: float) -> None:
        """Move a (and h = s²Ka) by t times the last direction."""
        self.a = self.a + t * self.da
        self.h = self.h + t * self.du

    def prior_term(self) -> float:
        """Return ‖Δθ‖²/(2s²) = s² aᵀKa / 2 = a·h / 2."""
        return float(self.a @ self.h) / 2

    def finalize(self, lam: torch.Tensor) -> None:
        """Freeze the posterior at the MAP: S = Λ^{1/2}, B factored when dense, Δθ = s² Jᵀ a."""
        self.S = sym_sqrt(lam)
        if self.dense:
            self.L, self.jitter = cholesky(self._B(self.S), "the Laplace system I + s²SKS")
        self.dtheta = self.s2 * self.lm.vjp(self.X, self.a.reshape(self.n, self.C))

    @property
    def delta_theta(self) -> torch.Tensor:
        """Return the MAP offset Δθ = s² Jᵀ a (P,)."""
        return self.dtheta

    def covariance(self, Xc: torch.Tensor) -> torch.Tensor:
        """Return s² K** − s⁴ K*X S B⁻¹ S K X* per test point, (m, C, C)."""
        m = Xc.shape[0]
        prior = self.s2 * self.lm.ntk_diag(Xc, block=True)
        if self.dense:
            KxS = self.kernels.matrix(Xc, self.X).T  # (nC, mC)
        else:
            eye = torch.eye(m * self.C, dtype=self.lm.dtype, device=self.lm.device)
            KxS = self.lm.kernel_matmul(self.X, Xc, eye)
        R = self.s2 * block_apply(self.S, KxS)
        if self.dense:
            V = torch.linalg.solve_triangular(self.L, R, upper=False)
            return prior - point_blocks(V, V, self.C)
        W = self._variance_cg(self._B_mv(self.S), R)
        return prior - point_blocks(R, W, self.C)

    def log_det(self) -> float:
        """Return log det B = log det(I + s² JᵀΛJ) (dense route only)."""
        return 2.0 * float(torch.log(self.L.diagonal()).sum())
