"""Dense kernel blocks J(X1)J(X2)ᵀ and diagonals, by the fastest exact path the model allows."""

from __future__ import annotations

import torch

from .caching import LastInputCache
from .linearized import LinearizedModel


class KernelBuilder:
    """Chooses between the structured (Linear/Conv2d) form and dense per-sample Jacobians, once per model."""

    def __init__(self, lm: LinearizedModel, independent: bool = False, structured: bool | None = None) -> None:
        self.lm = lm
        self.independent = independent
        self._structured = lm.structured if structured is not False else None
        self._checked = structured is False
        self.use_structured = False
        # The right-hand set is usually the training set, reused for every test chunk.
        self._jacobian_cached = LastInputCache(lm.jacobian)

    def _decide(self, X: torch.Tensor) -> None:
        if not self._checked:
            self.use_structured = self._structured is not None and self._structured.check(X)
            self._checked = True

    def clear_cache(self) -> None:
        """Forget the cached right-hand Jacobian, structured features and product features (benchmarks time uncached calls)."""
        self._jacobian_cached.clear()
        self.lm.clear_operator_cache()
        if self._structured is not None:
            self._structured._features_cached.clear()

    @property
    def path(self) -> str:
        """Return 'structured' or 'jacobian': the path dense kernels take."""
        return "structured" if self.use_structured else "jacobian"

    @property
    def fallback_reason(self) -> str:
        """Return why the structured path is not used ('' when it is)."""
        return "" if self.use_structured or self._structured is None else self._structured.reason

    def matrix(self, X1: torch.Tensor, X2: torch.Tensor | None = None) -> torch.Tensor:
        """Return K(X1, X2) of size (n1·K, n2·K); X2=None means X1."""
        X1 = self.lm.prepare(X1)
        X2 = X1 if X2 is None else self.lm.prepare(X2)
        self._decide(X1)
        if self.use_structured:
            return self._structured.matrix(X1, X1 if X2 is X1 else X2, self.independent)
        J2 = self._jacobian_cached(X2)  # (n2, K, P)
        n2, K, _ = J2.shape
        rows = []
        # The square case reuses J2 row blocks instead of computing J a second time.
        blocks = ((s, J2[s]) for s in self.lm.chunks(n2, self.lm.jacobian_chunk_size(K))) if X1 is X2 else self.lm.iter_jacobian(X1)
        for _, J1 in blocks:
            if self.independent:
                block = torch.einsum("ikp,jkp->ikj", J1, J2)
                full = torch.zeros(J1.shape[0], K, n2, K, dtype=block.dtype, device=block.device)
                idx = torch.arange(K, device=block.device)
                full[:, idx, :, idx] = block.permute(1, 0, 2)
                rows.append(full.reshape(-1, n2 * K))
            else:
                rows.append(J1.reshape(-1, J1.shape[-1]) @ J2.reshape(n2 * K, -1).T)
        return torch.cat(rows)

    def diag(self, X: torch.Tensor) -> torch.Tensor:
        """Return ‖J_k(x_i)‖² as (n, K)."""
        X = self.lm.prepare(X)
        self._decide(X)
        if self.use_structured:
            return self._structured.diag(X)
        return self.lm.ntk_diag(X)
