"""Kernel blocks, diagonals, J·v and Jᵀ·u from per-layer structured features: matrix products only.

A layer's features are its unfolded inputs U (n, L, g, a) and output signals G (n, K, L, g, o) — L
positions (1 for a Linear layer on (n, in) inputs, the output pixels of a convolution), g groups, a
inputs and o outputs per group — or, where that is smaller, its per-sample Jacobian J (n, K, P_layer)
= [Σ_l G_lᵀ U_l, Σ_l G_l] formed once from them. Sample i's weight gradient for output k is
Σ_l G[i,k,l]ᵀ U[i,l] (per group), its bias gradient Σ_l G[i,k,l]; everything below follows from that.
Nothing here runs the model.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

OPS_CHUNK_BYTES = 128 * 1024**2  # temporaries of one row block in products and kernel blocks


@dataclass
class LayerFeatures:
    """One layer's features for n samples: factors (U, G) or the per-sample Jacobian J (see module doc)."""

    weight: str | None  # parameter name of the linearized weight (None: the weight is not linearized)
    bias: str | None  # parameter name of the linearized bias
    U: torch.Tensor | None = None  # (n, L, g, a); None with J or without a linearized weight
    G: torch.Tensor | None = None  # (n, K, L, g, o)
    J: torch.Tensor | None = None  # (n, K, P_layer): weight (g·o·a, row-major) then bias (g·o)

    @property
    def n(self) -> int:
        return (self.J if self.J is not None else self.G).shape[0]

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (self.U, self.G, self.J) if t is not None)

    def rows(self, s: slice) -> LayerFeatures:
        """Return the features of samples s (views)."""
        pick = (lambda t: None if t is None else t[s])
        return LayerFeatures(self.weight, self.bias, pick(self.U), pick(self.G), pick(self.J))

    def jacobian(self) -> torch.Tensor:
        """Return the per-sample Jacobian (n, K, P_layer), formed from the factors if needed."""
        if self.J is not None:
            return self.J
        n, K = self.G.shape[:2]
        parts = []
        if self.weight is not None:
            parts.append(torch.einsum("nklgo,nlga->nkgoa", self.G, self.U).reshape(n, K, -1))
        if self.bias is not None:
            parts.append(self.G.sum(2).reshape(n, K, -1))
        return torch.cat(parts, dim=-1)


def _row_step(n: int, per_row_floats: int, itemsize: int) -> int:
    return max(1, min(n, OPS_CHUNK_BYTES // max(1, per_row_floats * itemsize)))


def _plain(f: LayerFeatures) -> bool:
    """True for factors with one position (a Linear layer on (n, in) inputs)."""
    return f.J is None and f.G.shape[2] == 1


def kernel_block(f1: LayerFeatures, f2: LayerFeatures, out: torch.Tensor, independent: bool = False) -> None:
    """Add this layer's share of J(X1) J(X2)ᵀ to `out` (n1, K, n2, K) in place."""
    n1, K, n2 = out.shape[0], out.shape[1], out.shape[2]
    idx = torch.arange(K, device=out.device)
    if _plain(f1) and _plain(f2):
        # (a_i·a_j + 1)(g_ik·g_jm): never forms a P-sized object.
        A1, A2 = f1.G.new_zeros(n1, 0), f2.G.new_zeros(n2, 0)
        if f1.weight is not None:
            A1, A2 = f1.U.reshape(n1, -1), f2.U.reshape(n2, -1)
        scale = A1 @ A2.T
        if f1.bias is not None:
            scale.add_(1.0)
        G1, G2 = f1.G.reshape(n1, K, -1), f2.G.reshape(n2, K, -1)
        if independent:
            gg = torch.einsum("iko,jko->kij", G1, G2).mul_(scale)
            out[:, idx, :, idx] += gg
        else:
            gg = (G1.reshape(n1 * K, -1) @ G2.reshape(n2 * K, -1).T).view(n1, K, n2, K)
            out.add_(gg.mul_(scale[:, None, :, None]))
        return
    # Positions > 1: per-sample layer Jacobians in row blocks on both sides (bounded temporaries).
    P = f1.rows(slice(0, 1)).jacobian().shape[-1]
    step = _row_step(max(n1, n2), K * (P + _factor_floats(f1)), out.element_size())
    right = [(s, f2.rows(s).jacobian()) for s in _slices(n2, step)] if f2.J is not None or n2 <= step else None
    for s1 in _slices(n1, step):
        J1 = f1.rows(s1).jacobian()
        blocks = right if right is not None else ((s, f2.rows(s).jacobian()) for s in _slices(n2, step))
        for s2, J2 in blocks:
            if independent:
                out[s1, :, s2, :][:, idx, :, idx] += torch.einsum("ikp,jkp->kij", J1, J2)
            else:
                m1, m2 = J1.shape[0], J2.shape[0]
                out[s1, :, s2, :] += (J1.reshape(m1 * K, -1) @ J2.reshape(m2 * K, -1).T).view(m1, K, m2, K)


def _factor_floats(f: LayerFeatures) -> int:
    if f.J is not None:
        return 0
    L, g, o = f.G.shape[2:]
    return L * g * o


def _slices(n: int, step: int) -> list[slice]:
    return [slice(s, min(s + step, n)) for s in range(0, n, step)]


def diag(f: LayerFeatures) -> torch.Tensor:
    """Return this layer's share of ‖J_k(x_i)‖² as (n, K)."""
    if _plain(f):
        n, K = f.G.shape[:2]
        scale = f.G.new_zeros(n)
        if f.weight is not None:
            scale = scale + f.U.reshape(n, -1).pow(2).sum(-1)
        if f.bias is not None:
            scale = scale + 1.0
        return scale[:, None] * f.G.reshape(n, K, -1).pow(2).sum(-1)
    if f.J is not None:
        return f.J.pow(2).sum(-1)
    step = _row_step(f.n, f.G.shape[1] * (_factor_floats(f) + f.rows(slice(0, 1)).jacobian().shape[-1]), f.G.element_size())
    return torch.cat([f.rows(s).jacobian().pow(2).sum(-1) for s in _slices(f.n, step)])


def _split_jacobian_columns(f: LayerFeatures, shapes: dict[str, torch.Size]) -> list[tuple[str, int]]:
    cols = []
    for name in (f.weight, f.bias):
        if name is not None:
            cols.append((name, int(torch.Size(shapes[name]).numel())))
    return cols


def jvp(f: LayerFeatures, tangents: dict[str, torch.Tensor], shapes: dict[str, torch.Size]) -> torch.Tensor:
    """Return this layer's share of J v as (c, n, K) for tangents {name: (c, *shape)}."""
    if f.J is not None:
        v = torch.cat([tangents[name].reshape(tangents[name].shape[0], -1) for name, _ in _split_jacobian_columns(f, shapes)], -1)
        return torch.einsum("nkp,cp->cnk", f.J, v)
    n, K, L, g, o = f.G.shape
    any_t = tangents[f.weight or f.bias]
    c = any_t.shape[0]
    W = None if f.weight is None else tangents[f.weight].reshape(c, g, o, -1)
    b = None if f.bias is None else tangents[f.bias].reshape(c, g, o)
    if L == 1 and W is None:
        return torch.einsum("cgo,nkgo->cnk", b, f.G[:, :, 0])
    if L == 1:
        H = torch.einsum("nga,cgoa->cngo", f.U[:, 0], W)
        if b is not None:
            H = H + b[:, None]
        return torch.einsum("cngo,nkgo->cnk", H, f.G[:, :, 0])
    out = f.G.new_empty(c, n, K)
    step = _row_step(n, c * L * g * o, f.G.element_size())
    for s in _slices(n, step):
        G = f.G[s]
        if W is None:
            out[:, s] = torch.einsum("cgo,nklgo->cnk", b, G)
            continue
        H = torch.einsum("nlga,cgoa->cnlgo", f.U[s], W)
        if b is not None:
            H = H + b[:, None, None]
        out[:, s] = torch.einsum("cnlgo,nklgo->cnk", H, G)
    return out


def vjp(f: LayerFeatures, u: torch.Tensor, shapes: dict[str, torch.Size]) -> dict[str, torch.Tensor]:
    """Return this layer's gradients {name: (c, *shape)} of Σ u·J for u of shape (c, n, K)."""
    c = u.shape[0]
    if f.J is not None:
        flat = torch.einsum("cnk,nkp->cp", u, f.J)
        out, start = {}, 0
        for name, size in _split_jacobian_columns(f, shapes):
            out[name] = flat[:, start : start + size].reshape(c, *shapes[name])
            start += size
        return out
    n, K, L, g, o = f.G.shape
    if L == 1:  # one position: two matrix products, no row blocks
        Gu = torch.einsum("cnk,nkgo->cngo", u, f.G[:, :, 0])
        out = {}
        if f.weight is not None:
            out[f.weight] = torch.einsum("cngo,nga->cgoa", Gu, f.U[:, 0]).reshape(c, *shapes[f.weight])
        if f.bias is not None:
            out[f.bias] = Gu.sum(1).reshape(c, *shapes[f.bias])
        return out
    W = None if f.weight is None else f.G.new_zeros(c, g, o, f.U.shape[-1])
    b = f.G.new_zeros(c, g, o) if f.bias is not None else None
    step = _row_step(n, c * L * g * o, f.G.element_size())
    for s in _slices(n, step):
        Gu = torch.einsum("cnk,nklgo->cnlgo", u[:, s], f.G[s])
        if W is not None:
            W += torch.einsum("cnlgo,nlga->cgoa", Gu, f.U[s])
        if b is not None:
            b += Gu.sum((1, 2))
    out = {}
    if W is not None:
        out[f.weight] = W.reshape(c, *shapes[f.weight])
    if b is not None:
        out[f.bias] = b.reshape(c, *shapes[f.bias])
    return out
