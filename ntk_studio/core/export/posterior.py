"""The exact weight-space posterior of a fitted predictor in a compact form an export can store.

Both the GP and the Laplace classifier have a Gaussian posterior over Δθ with precision
H = J̃ᵀJ̃ + I/s², where J̃ = J/σ for regression (J the n·K × P training Jacobian) and J̃ = Λ^{1/2} J
for classification (Λ the per-point softmax Hessians at the MAP). H differs from I/s² only on the
row space of J̃, of dimension r ≤ min(n·K, P). With V (P × r) an orthonormal basis of that space
and J̃ᵀJ̃ = V W Vᵀ,

    Σ = H⁻¹ = s² (I − V Vᵀ) + V diag(1/(w + 1/s²)) Vᵀ,

so a test gradient g (one row of J(x)) has variance s²‖g − V Vᵀ g‖² + Σ_i d_i (v_iᵀ g)². No
eigenvalue is dropped, so the form is exact; computing the complement as ‖g − V(Vᵀg)‖² (not as
‖g‖² − ‖Vᵀg‖²) avoids the cancellation that would otherwise cost digits where the data pin f down.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..errors import ExportTooLargeError, NotFittedError, UnsupportedExportError
from ..laplace import sym_sqrt
from ..linearized import LinearizedModel

# Bytes the posterior computation may hold at once (training Jacobian plus basis), and the most
# the stored basis may take in the file: ONNX protobufs cannot exceed 2 GiB.
POSTERIOR_MEMORY_BUDGET = 4 * 1024**3
MAX_STORED_BYTES = 1024**3


@dataclass
class LinearPosterior:
    """Δθ and the posterior covariance of Δθ as s²(I − VVᵀ) + V diag(scale²) Vᵀ."""

    task: str  # "regression" or "classification"
    delta_theta: torch.Tensor  # (P,)
    basis: torch.Tensor  # V, (P, r), orthonormal columns
    scale: torch.Tensor  # √d, (r,)
    prior_var: float
    noise: float | None  # σ² for regression, None for classification
    logit_scale: float = 1.0  # 1/T: a classifier's logits (mean) are divided by its temperature T

    @property
    def complement(self) -> bool:
        """Return whether V leaves directions where the posterior equals the prior (r < P)."""
        return self.basis.shape[1] < self.basis.shape[0]

    @property
    def rank(self) -> int:
        """Return r, the number of stored basis vectors."""
        return int(self.basis.shape[1])

    def stored_bytes(self, itemsize: int) -> int:
        """Return the bytes V, √d and Δθ take at `itemsize` bytes per number."""
        P, r = self.basis.shape
        return (P * r + r + P) * itemsize

    def gradient_covariance(self, G: torch.Tensor, prior_var: torch.Tensor | float | None = None) -> torch.Tensor:
        """Return gᵢ Σ gⱼᵀ for the rows of G (..., K, P): (..., K, K); `prior_var` overrides s²."""
        T = G @ self.basis
        Tw = T * self.scale
        cov = Tw @ Tw.transpose(-1, -2)
        if self.complement:
            R = G - T @ self.basis.T
            s2 = self.prior_var if prior_var is None else prior_var
            cov = cov + s2 * (R @ R.transpose(-1, -2))
        return cov


def _build(task: str, lm: LinearizedModel, X: torch.Tensor, whiten, prior_var: float, delta_theta: torch.Tensor,
           noise: float | None) -> LinearPosterior:
    n = X.shape[0]
    K = lm.output_dim
    P = lm.num_params
    itemsize = torch.finfo(lm.dtype).bits // 8
    r = min(n * K, P)
    need = (n * K * P + P * r + min(n * K, P) ** 2) * itemsize
    if need > POSTERIOR_MEMORY_BUDGET:
        raise ExportTooLargeError(
            f"The exact posterior needs {need / 1024**3:.1f} GiB to compute ({n} points × {K} outputs × "
            f"{P:,} parameters); the limit is {POSTERIOR_MEMORY_BUDGET / 1024**3:.0f} GiB. Linearize fewer "
            "parameters (e.g. params='last:1') or adapt on fewer points."
        )
    stored = (P * r + r + P) * itemsize
    if stored > MAX_STORED_BYTES:
        raise ExportTooLargeError(
            f"The exact posterior basis would take {stored / 1024**2:,.0f} MiB in the file (P = {P:,} × "
            f"r = {r:,}); the limit is {MAX_STORED_BYTES / 1024**2:,.0f} MiB. Linearize fewer parameters "
            "or adapt on fewer points."
        )
    J = whiten(lm.jacobian(X)).reshape(n * K, P)
    inv_s2 = 1.0 / prior_var
    if n * K < P:
        # Orthonormal basis of J̃'s row space by QR (backward stable), then the small eigenproblem.
        Q, R = torch.linalg.qr(J.T)
        w, Z = torch.linalg.eigh(R @ R.T)
        V = Q @ Z
    else:
        w, V = torch.linalg.eigh(J.T @ J)
    w = w.clamp_min(0.0)
    scale = torch.rsqrt(w + inv_s2)
    return LinearPosterior(task, delta_theta.detach().clone(), V, scale, float(prior_var), noise)


def posterior_from_gp(gp) -> LinearPosterior:
    """Return the exact posterior of a fitted :class:`~ntk_studio.core.gp.LinearizedGP`."""
    st = getattr(gp, "_state", {})
    if "delta_theta" not in st:
        raise NotFittedError("Fit the GP before exporting it.")
    if gp.outputs == "independent":
        raise UnsupportedExportError(
            "Export supports GPs with the full multi-output kernel; refit with outputs='full'."
        )
    sigma = gp.noise ** 0.5
    return _build("regression", gp.lm, st["X"], lambda J: J / sigma, gp.prior_var, gp.delta_theta, gp.noise)


def posterior_from_classifier(clf) -> LinearPosterior:
    """Return the Laplace posterior of a fitted :class:`~ntk_studio.core.classify.LinearizedClassifier`."""
    route = getattr(clf, "_route", None)
    if route is None:
        raise NotFittedError("Fit the classifier before exporting it.")
    S = route.S if hasattr(route, "S") else sym_sqrt(route.lam)

    def whiten(J: torch.Tensor) -> torch.Tensor:
        return torch.einsum("iab,ibp->iap", S, J)

    post = _build("classification", clf.lm, route.X, whiten, clf.prior_var, clf.delta_theta, None)
    # A held-out search may scale the logit covariance by τ (clf.cov_scale) and divide the logits by a temperature T
    # (clf.logit_temperature): mean/T and τΣ/T² = (τ/T²)s²(I − VVᵀ) + V diag((τ/T²)d) Vᵀ.
    tau = float(getattr(clf, "cov_scale", 1.0))
    temperature = float(getattr(clf, "logit_temperature", 1.0))
    factor = tau / temperature**2
    if factor != 1.0:
        post.scale, post.prior_var = post.scale * factor**0.5, post.prior_var * factor
    post.logit_scale = 1.0 / temperature
    return post
