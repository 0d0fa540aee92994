"""GPyTorch side of the engine: matrix-free LinearOperators, the Jacobian kernel, the network mean.

The kernel s²·J(X1)J(X2)ᵀ is never formed: :class:`JacobianKernelOperator` answers products with
vjp-then-jvp over data chunks, diagonals with per-sample gradients and single entries (for the
pivoted-Cholesky preconditioner) with kernel rows. GPyTorch's inputs are row ids (sample-major,
row = i·K + k) so multi-output models use the same machinery as single-output ones.
"""

from __future__ import annotations

from dataclasses import dataclass

import gpytorch
import torch
from linear_operator.operators import LinearOperator

from .errors import ShapeError
from .linearized import LinearizedModel


@dataclass
class MatvecCounter:
    """Counts kernel/GGN product columns; the source of CG progress (linear_cg has no callback)."""

    columns: int = 0
    calls: int = 0
    max_calls: int = 0
    stage: str = "solve"

    def add(self, lm: LinearizedModel, columns: int) -> None:
        """Record one product with `columns` right-hand sides and report progress."""
        self.columns += columns
        self.calls += 1
        if lm.reporter is not None:
            lm.reporter.matvecs = self.columns
            frac = self.calls / self.max_calls if self.max_calls else 0.0
            lm.reporter.emit(self.stage, frac, message=f"{self.calls} products")


class JacobianKernelOperator(LinearOperator):
    """The (n1·K) × (n2·K) operator J(X1) J(X2)ᵀ, matrix-free."""

    def __init__(
        self,
        X1: torch.Tensor,
        X2: torch.Tensor,
        *,
        lm: LinearizedModel,
        independent: bool = False,
        counter: MatvecCounter | None = None,
        diag_fn=None,
    ) -> None:
        super().__init__(X1, X2, lm=lm, independent=independent, counter=counter, diag_fn=diag_fn)
        self.X1, self.X2 = X1, X2
        self.lm, self.independent, self.counter = lm, independent, counter
        # ‖J_k(x)‖² by the cheapest available path (structured Linear-layer form when it applies).
        self.diag_fn = diag_fn or lm.ntk_diag
        self.K = lm._ensure_output_dim(X1)

    def _matmul(self, rhs: torch.Tensor) -> torch.Tensor:
        if rhs.dim() > 2:
            return torch.stack([self._matmul(r) for r in rhs])
        if self.counter is not None:
            self.counter.add(self.lm, 1 if rhs.dim() == 1 else rhs.shape[-1])
        return self.lm.kernel_matmul(self.X1, self.X2, rhs, self.independent)

    def _size(self) -> torch.Size:
        return torch.Size([self.X1.shape[0] * self.K, self.X2.shape[0] * self.K])

    def _transpose_nonbatch(self) -> JacobianKernelOperator:
        return JacobianKernelOperator(
            self.X2, self.X1, lm=self.lm, independent=self.independent, counter=self.counter, diag_fn=self.diag_fn
        )

    def _diagonal(self) -> torch.Tensor:
        if self.X1 is not self.X2 and not torch.equal(self.X1, self.X2):
            raise ShapeError("The diagonal is defined for square kernels K(X, X) only.")
        return self.diag_fn(self.X1).reshape(-1)

    def _get_indices(self, row_index, col_index, *batch_indices) -> torch.Tensor:
        # Entries come from whole kernel rows: rows needed are few (pivoted Cholesky asks one at a
        # time) and a row costs one vjp plus one jvp over the data.
        row_index, col_index = torch.broadcast_tensors(row_index, col_index)
        samples, inverse = torch.unique(torch.div(row_index, self.K, rounding_mode="floor"), return_inverse=True)
        nS = samples.numel()
        eye = torch.eye(nS * self.K, dtype=self.lm.dtype, device=self.lm.device)
        rows = self.lm.kernel_matmul(self.X2, self.X1[samples], eye, self.independent).T  # (nS·K, n2·K)
        local = inverse * self.K + row_index % self.K
        return rows[local, col_index]

    def _expand_batch(self, batch_shape):  # pragma: no cover - the engine never batches kernels
        raise NotImplementedError("JacobianKernelOperator does not support batch dimensions.")


class GGNOperator(LinearOperator):
    """The P × P generalized Gauss–Newton J(X)ᵀ J(X), matrix-free (jvp then vjp)."""

    def __init__(self, X: torch.Tensor, *, lm: LinearizedModel, counter: MatvecCounter | None = None) -> None:
        super().__init__(X, lm=lm, counter=counter)
        self.X, self.lm, self.counter = X, lm, counter

    def _matmul(self, rhs: torch.Tensor) -> torch.Tensor:
        if rhs.dim() > 2:  # linear_operator broadcasts batched right-hand sides
            return torch.stack([self._matmul(r) for r in rhs])
        vector = rhs.dim() == 1
        cols = rhs.unsqueeze(-1) if vector else rhs
        if self.counter is not None:
            self.counter.add(self.lm, cols.shape[-1])
        out = self.lm.ggn_matvec(self.X, cols.T).T
        return out[:, 0] if vector else out

    def _diagonal(self) -> torch.Tensor:
        # diag(JᵀJ)_p = Σ_rows J[row, p]²: per-sample Jacobians chunk by chunk, never all of J at once.
        return sum(J.pow(2).sum(dim=(0, 1)) for _, J in self.lm.iter_jacobian(self.X))

    def _get_indices(self, row_index, col_index, *batch_indices) -> torch.Tensor:
        # Entries from whole columns G e_c (one GGN product for all the distinct columns asked for).
        row_index, col_index = torch.broadcast_tensors(row_index, col_index)
        cols, inverse = torch.unique(col_index, return_inverse=True)
        E = torch.zeros(self.lm.num_params, cols.numel(), dtype=self.lm.dtype, device=self.lm.device)
        E[cols, torch.arange(cols.numel(), device=E.device)] = 1.0
        return self._matmul(E)[row_index, inverse]

    def _size(self) -> torch.Size:
        return torch.Size([self.lm.num_params, self.lm.num_params])

    def _transpose_nonbatch(self) -> GGNOperator:
        return self

    def _expand_batch(self, batch_shape):  # pragma: no cover - the engine never batches GGNs
        raise NotImplementedError("GGNOperator does not support batch dimensions.")


def _samples_from_rows(rows: torch.Tensor, K: int) -> torch.Tensor:
    ids = rows.reshape(-1).long()
    if ids.numel() % K:
        raise ShapeError("Row ids must cover whole samples (K consecutive rows each).")
    blocks = ids.view(-1, K)
    samples = torch.div(blocks[:, 0], K, rounding_mode="floor")
    expected = samples.unsqueeze(1) * K + torch.arange(K, device=ids.device)
    if not torch.equal(blocks, expected):
        raise ShapeError("Row ids must be sample-major: i·K + k for k = 0..K-1.")
    return samples


class JacobianKernel(gpytorch.kernels.Kernel):
    """GPyTorch kernel J(x)J(x')ᵀ over the rows of a fixed data set (inputs are row ids)."""

    is_stationary = False

    def __init__(self, lm: LinearizedModel, X: torch.Tensor, independent: bool = False, counter=None) -> None:
        super().__init__()
        self.lm, self.X, self.independent, self.counter = lm, X, independent, counter
        self.K = lm._ensure_output_dim(X)

    def forward(self, x1, x2, diag: bool = False, last_dim_is_batch: bool = False, **params):
        s1 = _samples_from_rows(x1, self.K)
        X1 = self.X[s1]
        if diag:
            return self.lm.ntk_diag(X1).reshape(-1)
        X2 = X1 if torch.equal(x1, x2) else self.X[_samples_from_rows(x2, self.K)]
        return JacobianKernelOperator(X1, X2, lm=self.lm, independent=self.independent, counter=self.counter)


class NetworkMean(gpytorch.means.Mean):
    """GPyTorch mean f(x; θ*) over the rows of a fixed data set (inputs are row ids)."""

    def __init__(self, lm: LinearizedModel, X: torch.Tensor, f_X: torch.Tensor | None = None) -> None:
        super().__init__()
        self.lm, self.X = lm, X
        self.f_flat = (lm.forward(X) if f_X is None else f_X).reshape(-1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.f_flat[x.reshape(-1).long()]


class LinearizedExactGP(gpytorch.models.ExactGP):
    """An ExactGP whose prior is GP(f(x; θ*), s²·J(x)J(x')ᵀ); used for marginal-likelihood fitting."""

    def __init__(self, lm, X, targets_flat, f_X, likelihood, independent=False, counter=None) -> None:
        rows = torch.arange(targets_flat.numel(), dtype=lm.dtype, device=lm.device).unsqueeze(-1)
        super().__init__(rows, targets_flat, likelihood)
        self.mean_module = NetworkMean(lm, X, f_X)
        self.covar_module = gpytorch.kernels.ScaleKernel(JacobianKernel(lm, X, independent, counter))

    def forward(self, rows: torch.Tensor) -> gpytorch.distributions.MultivariateNormal:
        return gpytorch.distributions.MultivariateNormal(self.mean_module(rows), self.covar_module(rows))
