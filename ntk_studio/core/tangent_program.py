"""J·v by forward mode with the primal computed once: a traced program split into a primal and a tangent part.

The linearized part f(θ, Z) is traced once per chunk shape with fake tensors (``make_fx``, no data
touched) as the forward-mode derivative v ↦ J v, and its graph is split by dependence on the tangent
v: the **primal part** (everything that reads only θ*, the frozen tensors and the inputs) runs once
per chunk of data and its values are kept; the **tangent part** runs per product and costs about one
forward pass (a Linear layer: x·dWᵀ + dx·Wᵀ; an activation: a product with its kept derivative).
This is ``torch.func.linearize`` without its two redundant evaluations and re-tracing per chunk: the
program holds no data and is reused for every chunk (and every input set) of the same shape.

Tracing with fake tensors cannot follow control flow that depends on values (``if x.sum() > 0``),
``.item()``, ops without a forward-mode formula or without a fake implementation: :func:`trace`
raises :class:`TraceError` with the reason, and the caller falls back (see :mod:`.primal_cache`).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence

import torch
import torch.autograd.forward_ad as fwAD
from torch import fx
from torch.func import vmap
from torch.fx.experimental.proxy_tensor import make_fx
from torch.fx.passes.reinplace import reinplace


class TraceError(RuntimeError):
    """The tangent map could not be traced; the message says why (one line)."""


class TangentProgram:
    """J·v for one input shape: :meth:`primal` once per chunk (kept values), then :meth:`push` per product."""

    def __init__(self, primal: fx.GraphModule, tangent: fx.GraphModule, n_primal: int, names_shapes) -> None:
        self._primal = primal
        self._tangent = tangent
        self._in_place = False
        self._tangent_shapes = names_shapes  # (dtype, shape) of each tangent input
        self.n_primal = n_primal  # how many values the primal part returns (what a chunk keeps)

    def primal(self, values: Sequence[torch.Tensor], Z: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """Return what the tangent part reads for inputs Z: computed once per chunk, no autograd."""
        with torch.no_grad():
            state = tuple(self._primal(*values, Z))
        if not self._in_place:
            self._reuse_buffers(state)
        return state

    def _reuse_buffers(self, state: tuple[torch.Tensor, ...]) -> None:
        """Let the tangent part write into its own temporaries (fewer fresh allocations per product).

        torch's reinplacing pass needs example inputs, so it runs on the first chunk's values; it never
        writes into the kept values or the tangents (graph inputs). Left as is if the pass fails.
        """
        self._in_place = True
        tangents = [torch.zeros(shape, dtype=dtype, device=state[0].device if state else None)
                    for dtype, shape in self._tangent_shapes]
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                self._tangent = reinplace(self._tangent, *state, *tangents)
        except Exception:  # noqa: BLE001 — an optimization only: the out-of-place program stays
            pass

    def push(self, state: Sequence[torch.Tensor], tangents: Sequence[torch.Tensor]) -> torch.Tensor:
        """Return J v as (c, n, K) for per-parameter tangents with a leading batch dimension c."""
        def one(*t: torch.Tensor) -> torch.Tensor:
            out = self._tangent(*state, *t)
            return out[0] if isinstance(out, (list, tuple)) else out

        if tangents[0].shape[0] == 1:  # one column: vmap's per-op dispatch would cost more than the product
            return one(*(t[0] for t in tangents)).unsqueeze(0)
        try:
            return vmap(one)(*tangents)
        except RuntimeError:  # an op without a batching rule: one column at a time
            return torch.stack([one(*(t[j] for t in tangents)) for j in range(tangents[0].shape[0])])


def trace(fn: Callable[[dict[str, torch.Tensor], torch.Tensor], torch.Tensor], values: dict[str, torch.Tensor],
          names: Sequence[str], Z: torch.Tensor) -> TangentProgram:
    """Return the program for J v of `fn(values, Z)` with respect to values[names], for inputs shaped like Z.

    `values` holds every tensor `fn` reads (linearized and frozen); they are inputs of the program,
    not constants, so one program serves every chunk of Z's shape. Raises TraceError when tracing fails.
    """
    keys = list(values)
    where = {n: keys.index(n) for n in names}

    def tangent_map(*flat: torch.Tensor) -> torch.Tensor:
        vals, Zc, tangents = flat[: len(keys)], flat[len(keys)], flat[len(keys) + 1 :]
        with fwAD.dual_level():
            duals = dict(zip(keys, vals))
            for n, t in zip(names, tangents):
                duals[n] = fwAD.make_dual(vals[where[n]], t)
            out = fn(duals, Zc)
            primal, tangent = fwAD.unpack_dual(out)
        # No linearized parameter reaches the output: J is zero.
        return torch.zeros_like(primal) if tangent is None else tangent

    example = [*values.values(), Z, *(torch.zeros_like(values[n]) for n in names)]
    try:
        # Inside an autograd.Function's forward (linear_operator's solves call our products there) forward
        # AD is off, and under no_grad make_fx records no tangent: J would silently be zero. Both on here.
        with warnings.catch_warnings(), torch.enable_grad(), fwAD._set_fwd_grad_enabled(True):
            warnings.simplefilter("ignore")  # tracing-internal notices, not the user's concern
            gm = make_fx(tangent_map, tracing_mode="fake", _allow_non_fake_inputs=True)(*example)
    except Exception as exc:  # noqa: BLE001 — any failure to trace means "use the fallback", with the reason
        kind = type(exc).__name__
        if "DataDependent" in kind:  # Python control flow on tensor values, .item(), value-dependent shapes
            kind = f"the model reads tensor values in Python ({kind})"
        raise TraceError(f"{kind}: {' '.join(str(exc).split())[:120]}") from None
    gm.graph.eliminate_dead_code()
    _merge_repeats(gm.graph)
    _drop_zero_terms(gm.graph)
    gm.recompile()
    primal, tangent, n_primal = _split(gm, len(keys) + 1)
    if not any(n.op == "placeholder" and n.users for n in tangent.graph.nodes if n.name not in _kept_names(n_primal)):
        # J v read no tangent: forward AD recorded nothing. Never serve a silent zero: the fallback
        # (double backward) computes J, zero or not.
        raise TraceError("the traced tangent map reads no tangent")
    return TangentProgram(primal, tangent, n_primal, [(values[n].dtype, tuple(values[n].shape)) for n in names])


def _merge_repeats(graph: fx.Graph) -> None:
    """Merge calls of the same pure op on the same arguments (forward-mode formulas repeat means and differences)."""
    seen: dict = {}
    for n in list(graph.nodes):
        op = n.target
        if n.op != "call_function" or not isinstance(op, torch._ops.OpOverload):
            continue
        if op._schema.is_mutable or torch.Tag.nondeterministic_seeded in op.tags:
            continue
        try:
            key = (op, _freeze(n.args), _freeze(n.kwargs))
            hash(key)
        except TypeError:
            continue
        if key in seen:
            n.replace_all_uses_with(seen[key])
            graph.erase_node(n)
        else:
            seen[key] = n
    graph.eliminate_dead_code()


_aten = torch.ops.aten
_ZERO_SOURCES = {_aten.zeros.default, _aten.zeros_like.default, _aten.new_zeros.default, _aten._efficientzerotensor.default}
_ZERO_KEEPING = {  # zero in the first argument gives zero out
    _aten.expand.default, _aten.view.default, _aten.reshape.default, _aten._unsafe_view.default, _aten.t.default,
    _aten.transpose.int, _aten.permute.default, _aten.clone.default, _aten.alias.default, _aten.neg.default,
    _aten.unsqueeze.default, _aten.squeeze.dim, _aten.slice.Tensor, _aten.select.int, _aten._to_copy.default,
}
_ZERO_IF_ANY = {_aten.mm.default, _aten.bmm.default, _aten.mul.Tensor, _aten.convolution.default}  # bilinear


def _drop_zero_terms(graph: fx.Graph) -> None:
    """Remove additions of exact zeros (the tangent of an input, which has none: conv(0, W), 0·Wᵀ).

    Such a term would otherwise be kept per chunk (a full-size tensor of zeros) and added per product.
    An addition x + 0 becomes x, broadcast to the sum's shape when needed (a view, no copy).
    """
    zero: set[fx.Node] = set()
    for n in graph.nodes:
        if n.op != "call_function":
            continue
        args = [a for a in n.args if isinstance(a, fx.Node)]
        if n.target in _ZERO_SOURCES or (n.target in _ZERO_KEEPING and args and n.args[0] in zero) or (
            n.target in _ZERO_IF_ANY and any(a in zero for a in n.args[:2] if isinstance(a, fx.Node))
        ):
            zero.add(n)
        elif n.target == _aten.add.Tensor and len(n.args) == 2 and not n.kwargs:
            a, b = n.args
            other = a if b in zero else b if a in zero else None
            val, other_val = n.meta.get("val"), getattr(other, "meta", {}).get("val")
            if other is None or not isinstance(other, fx.Node) or val is None or other_val is None:
                continue
            if other_val.dtype != val.dtype:
                continue
            if tuple(other_val.shape) == tuple(val.shape):
                n.replace_all_uses_with(other)
            else:
                with graph.inserting_before(n):
                    wide = graph.call_function(_aten.expand.default, (other, list(val.shape)))
                wide.meta["val"] = val
                n.replace_all_uses_with(wide)
    graph.eliminate_dead_code()


def _freeze(a):
    """Return a hashable form of fx node arguments (nodes by identity)."""
    if isinstance(a, (list, tuple)):
        return (type(a).__name__, tuple(_freeze(x) for x in a))
    if isinstance(a, dict):
        return tuple(sorted((k, _freeze(v)) for k, v in a.items()))
    if isinstance(a, fx.Node):
        return ("node", id(a))
    return a


def _kept_names(k: int) -> set[str]:
    return {f"kept_{i}" for i in range(k)}


def _split(gm: fx.GraphModule, n_inputs: int) -> tuple[fx.GraphModule, fx.GraphModule, int]:
    """Split gm by dependence on its placeholders after the first `n_inputs` (the tangents).

    Returns (primal, tangent, k): primal(*inputs) returns the k values the tangent-dependent nodes
    read; tangent(*those k values, *tangents) returns gm's output.
    """
    nodes = list(gm.graph.nodes)
    placeholders = [n for n in nodes if n.op == "placeholder"]
    tangent_inputs = placeholders[n_inputs:]
    dependent = set(tangent_inputs)
    for n in nodes:
        if n.op not in ("placeholder", "output") and any(a in dependent for a in n.all_input_nodes):
            dependent.add(n)
    (out_node,) = [n for n in nodes if n.op == "output"]
    readers = dependent | {out_node}
    kept = [n for n in nodes if n not in dependent and n.op != "output" and any(u in readers for u in n.users)]

    primal_graph, env = fx.Graph(), {}
    for n in nodes:
        if n in dependent or n.op == "output":
            continue
        env[n] = primal_graph.node_copy(n, lambda a: env[a])
    primal_graph.output(tuple(env[n] for n in kept))

    tangent_graph, env2 = fx.Graph(), {}
    for i, n in enumerate(kept):
        env2[n] = tangent_graph.placeholder(f"kept_{i}")
    for n in nodes:
        if n in dependent:
            env2[n] = tangent_graph.node_copy(n, lambda a: env2[a])
    tangent_graph.output(fx.map_arg(out_node.args[0], lambda a: env2[a]))
    primal = fx.GraphModule(gm, primal_graph)
    primal.graph.eliminate_dead_code()
    primal.recompile()
    return primal, fx.GraphModule(gm, tangent_graph), len(kept)
