"""The generic path's primal, computed once per chunk: J·v by forward mode, Jᵀ·u from a kept autograd graph.

For models without a structured form, every product used to run the network again (vjp: forward +
backward; jvp: forward + tangent). Here each chunk's forward runs once with the linearized parameters
as autograd leaves and the graph is kept: Jᵀ u is one backward through it. J v is forward mode from a
:class:`~.tangent_program.TangentProgram` (traced once per chunk shape and kept on the model): its
primal part runs once per chunk and only the tangent part runs per product. When the tangent map
cannot be traced (value-dependent control flow, an op without a forward-mode formula…), J v is the
backward of the backward with respect to its (zero) output cotangent — a linear map whose transpose
is J — from a second kept graph, and :attr:`PrimalCache.how` says why. Everything kept (the graphs'
saved activations, the programs' primal values) is measured on the first chunk and the cache is
refused when the projection for all chunks exceeds the budget; the products then recompute.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from .tangent_program import TangentProgram, TraceError, trace

if TYPE_CHECKING:  # pragma: no cover
    from .linearized import LinearizedModel

FORWARD_MODE = "forward mode (traced tangent program)"
PROGRAMS_KEPT = 16  # traced programs per model (one per chunk shape; remainder chunks add shapes): oldest out


class _Chunk:
    def __init__(self, lm: LinearizedModel, Z: torch.Tensor) -> None:
        self.leaves = {n: t.detach().requires_grad_(True) for n, t in lm.theta.items()}
        with torch.enable_grad():
            self.out = lm._g(self.leaves, Z)
        self.program: TangentProgram | None = None
        self.state: tuple[torch.Tensor, ...] = ()
        self.u0: torch.Tensor | None = None
        self.grads: tuple[torch.Tensor, ...] | None = None

    def backward_graph(self) -> None:
        """Build Jᵀ u0 as a differentiable function of u0 (for J v by a second backward)."""
        with torch.enable_grad():
            self.u0 = torch.zeros_like(self.out, requires_grad=True)
            self.grads = torch.autograd.grad(
                self.out, list(self.leaves.values()), self.u0, create_graph=True, allow_unused=True, materialize_grads=True
            )


class PrimalCache:
    """J·v and Jᵀ·u over the rows of prepared inputs Z from kept per-chunk state (see module doc).

    `programs` maps a chunk's (shape, dtype, device) to its traced program, or to the reason tracing
    failed; it belongs to the LinearizedModel and outlives this cache. With `forward_mode` False, J v
    is always the double backward (kept for comparison).
    """

    def __init__(
        self, lm: LinearizedModel, Z: torch.Tensor, rows: slice, budget: int,
        programs: dict | None = None, forward_mode: bool = True,
    ) -> None:
        self.lm = lm
        self.rows = rows
        self.chunks: list[tuple[slice, _Chunk]] = []
        self.nbytes = 0
        self.graph_bytes = 0  # saved activations of the kept autograd graphs
        self.state_bytes = 0  # the tangent programs' kept primal values
        self.refusal = ""
        self.how = FORWARD_MODE if forward_mode else "double backward (forward_mode off)"
        programs = {} if programs is None else programs
        own = {t.untyped_storage().data_ptr() for t in (*lm.theta.values(), *lm.frozen.values(), Z)}
        seen: set[tuple[int, int]] = set()

        def pack(t: torch.Tensor) -> torch.Tensor:
            key = (t.data_ptr(), t.numel())
            if t.untyped_storage().data_ptr() not in own and key not in seen:
                seen.add(key)
                self.graph_bytes += t.numel() * t.element_size()
            return t

        values = {**lm.frozen, **lm.theta}
        slices = list(lm.chunks(rows.stop - rows.start))
        for i, s in enumerate(slices):
            Zc = Z[rows.start + s.start : rows.start + s.stop]
            with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
                chunk = _Chunk(lm, Zc)
            program = self._program(programs, values, Zc) if forward_mode else None
            if program is not None:
                chunk.program, chunk.state = program, program.primal(list(values.values()), Zc)
                for t in chunk.state:
                    ptr = t.untyped_storage().data_ptr()
                    if ptr not in own:
                        own.add(ptr)
                        self.state_bytes += t.untyped_storage().nbytes()
            else:
                with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
                    chunk.backward_graph()
            self.chunks.append((s, chunk))
            self.nbytes = self.graph_bytes + self.state_bytes
            projected = self.nbytes * len(slices) // (i + 1)
            if projected > budget:
                self.refusal = f"the kept graphs would need ~{projected / 2**20:,.0f} MiB > budget {budget / 2**20:,.0f} MiB"
                self.chunks = []
                return

    def _program(self, programs: dict, values: dict[str, torch.Tensor], Zc: torch.Tensor) -> TangentProgram | None:
        """Return the traced program for Zc's shape (tracing it once), or None with the reason in self.how."""
        key = (tuple(Zc.shape), tuple(Zc.stride()), Zc.dtype, Zc.device)
        if key not in programs:
            while len(programs) >= PROGRAMS_KEPT:
                programs.pop(next(iter(programs)))
            try:
                programs[key] = trace(self.lm._g, values, list(self.lm.theta), Zc)
            except TraceError as exc:
                programs[key] = f"double backward: the tangent map could not be traced ({exc})"
        found = programs[key]
        if isinstance(found, str):
            self.how = found
            return None
        return found

    def jvp(self, tangents: torch.Tensor) -> torch.Tensor:
        """Return J v over the rows as (c, n_rows, K) for flat tangents (c, P)."""
        sizes = self.lm.subset.sizes
        parts = []
        for _, ch in self.chunks:
            self.lm.check_cancel()
            cols = tuple(t for t in torch.split(tangents, sizes, dim=-1))
            cols = [c.reshape(c.shape[0], *p.shape) for c, p in zip(cols, ch.leaves.values())]
            if ch.program is not None:
                parts.append(ch.program.push(ch.state, cols).reshape(tangents.shape[0], *ch.out.shape))
                continue
            # Parameters the output does not reach have constant (zero) gradients: no J v share.
            live = [i for i, g in enumerate(ch.grads) if g.requires_grad]
            if live:
                (out,) = _batched_grad(tuple(ch.grads[i] for i in live), (ch.u0,), tuple(cols[i] for i in live))
            else:
                out = ch.out.new_zeros(tangents.shape[0], *ch.out.shape)
            parts.append(out)
        return torch.cat(parts, dim=1)

    def vjp(self, u: torch.Tensor) -> torch.Tensor:
        """Return Jᵀ u as (c, P) for u of shape (c, n_rows, K)."""
        total = torch.zeros(u.shape[0], self.lm.num_params, dtype=self.lm.dtype, device=self.lm.device)
        for s, ch in self.chunks:
            self.lm.check_cancel()
            grads = _batched_grad((ch.out,), tuple(ch.leaves.values()), (u[:, s],))
            total += torch.cat([g.reshape(g.shape[0], -1) for g in grads], dim=-1)
        return total


def _batched_grad(outputs, inputs, cotangents) -> tuple[torch.Tensor, ...]:
    """Return d(outputs)/d(inputs) applied to each of c cotangents (leading dim c), keeping the graph."""
    # A caller differentiating through the product (linear_operator's tests do) gets a result that
    # tracks the cotangents: the backward is then recorded too.
    create = torch.is_grad_enabled() and any(c.requires_grad for c in cotangents)
    with torch.enable_grad():
        try:
            return torch.autograd.grad(
                outputs, inputs, cotangents, retain_graph=True, create_graph=create, is_grads_batched=True,
                allow_unused=True, materialize_grads=True,
            )
        except RuntimeError:  # an op without a batching rule: one column at a time
            cols = [
                torch.autograd.grad(
                    outputs, inputs, tuple(c[j] for c in cotangents), retain_graph=True, create_graph=create,
                    allow_unused=True, materialize_grads=True,
                )
                for j in range(cotangents[0].shape[0])
            ]
            return tuple(torch.stack(parts) for parts in zip(*cols))
