"""Frozen-prefix caching: when the linearized parameters are a suffix of the network, run the rest once.

If every linearized parameter lies after one tensor h of the forward pass (a head, the last K layers,
named trailing modules), then f(x; θ) = g(h(x); θ) with h frozen, so every Jacobian product only needs
g. :func:`find_split` looks for the latest such h in the module graph:

* ``torch.fx``: the forward is traced (with every module in eval mode, so a ``self.training`` branch
  is taken as it is at run time); a cut after node c is valid when c is the only value computed before
  it that is still read after it (parameters and constants read through ``get_attr`` are copied to the
  suffix), and no linearized parameter is read before it. A skip connection around the boundary makes
  two values cross it, and the cut moves earlier (possibly to the input: no prefix).
* ``nn.Sequential`` (when tracing fails): the children before the first child holding a linearized
  parameter.

The split is only trusted after the suffix of the prefix reproduced the whole model on two inputs.

:class:`FeatureCache` keeps the prefix's features of a few input sets, shared by every
:class:`~.linearized.LinearizedModel` built from the same model in the same state (parameter tensors
and their ``_version`` as at construction), so the refits of an evidence search, Newton steps,
variances and predictions on the same inputs run the prefix once. An input is found by identity and
``_version`` (a changed tensor misses), as a row slice of a cached input (chunks), or by exact
equality of values (a fresh classifier's copy of the same data): the comparison costs a pass over
the input, far less than the prefix's forward.

The prefix runs in the model's own dtype by default (``prefix_dtype="model"``: float32 for a float32
network, the precision it was trained and is fine-tuned in), in chunks, without autograd, and its
features are cast to the engine's dtype (float64 by default) for the linearized suffix. The features
then carry the prefix's own rounding (measured on faces' MobileNetV2 body: 4e-6 relative to the
float64 body); everything after them is exact in the engine's dtype. ``prefix_dtype="engine"`` runs
the prefix in the engine's dtype (exact; faces' MobileNetV2 body is 2.5–4.4× slower in float64). A float64 model is run in float64
either way.
"""

from __future__ import annotations

import contextlib
import weakref
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass, field
from enum import StrEnum

import torch
from torch import fx, nn

# Features of all cached inputs together (plus their private copies of the inputs) stay under this.
CACHE_BYTES = 512 * 1024**2
CACHE_ENTRIES = 4
SOURCES = 8  # tensors remembered per entry as holding its inputs
PROBE_SAMPLES = 2
# The split's output may differ from the whole model's by this much (relative to its largest value) on
# the probe rows, by the dtype the prefix ran in: a wrong split differs by O(1); a float32 body by ~1e-6
# (faces' MobileNetV2: 4e-6 in the features).
PROBE_RTOL = {torch.float64: 1e-9, torch.float32: 1e-4, torch.float16: 1e-2, torch.bfloat16: 5e-2}
# Rows per prefix chunk on the CPU: this many bytes of input (≈42 images of 3×64×64 float32). On 1-2
# cores MobileNetV2 ran 200 images 1.5-2× faster in chunks of 16-32 than in one batch (activations
# stay in cache); other devices use the model's chunk_size.
PREFIX_CHUNK_BYTES = 2 * 1024**2


class PrefixDtype(StrEnum):
    """The dtype the frozen prefix runs in before its features are cast to the engine's dtype."""

    MODEL = "model"  # the model's own (float32 for a float32 model; never wider than the engine's)
    ENGINE = "engine"  # the engine's (float64 by default): exact, slower

_enabled = True


def set_enabled(flag: bool) -> None:
    """Turn frozen-prefix detection on or off for LinearizedModels built from now on."""
    global _enabled
    _enabled = bool(flag)


def is_enabled() -> bool:
    """Return whether new LinearizedModels look for a frozen prefix."""
    return _enabled


@contextlib.contextmanager
def disabled() -> Iterator[None]:
    """Context in which new LinearizedModels run the whole network for every product (no cache)."""
    before = _enabled
    set_enabled(False)
    try:
        yield
    finally:
        set_enabled(before)


@dataclass
class Split:
    """A frozen prefix (inputs -> features) and the linearized suffix (features -> outputs)."""

    prefix: nn.Module
    suffix: nn.Module
    route: str  # "torch.fx" or "nn.Sequential"
    boundary: str  # where the cut is, e.g. "before head"
    frozen_numel: int  # parameters the prefix evaluates
    state: list[torch.Tensor] = field(default_factory=list)  # the user's prefix tensors (cache key)
    _names: dict[int, frozenset[str]] = field(default_factory=dict)

    def names(self, part: nn.Module) -> frozenset[str]:
        """Return the parameter and buffer names (aliases included) that `part` holds."""
        key = id(part)
        if key not in self._names:
            found = [n for n, _ in part.named_parameters(remove_duplicate=False)]
            found += [n for n, _ in part.named_buffers(remove_duplicate=False)]
            self._names[key] = frozenset(found)
        return self._names[key]


@contextlib.contextmanager
def _eval_mode(model: nn.Module) -> Iterator[None]:
    training = [m for m in model.modules() if m.training]
    for m in training:
        m.training = False
    try:
        yield
    finally:
        for m in training:
            m.training = True


def _tensor_ids(obj) -> set[int]:
    if isinstance(obj, nn.Module):
        return {id(t) for _, t in obj.named_parameters(remove_duplicate=False)}
    return {id(obj)} if torch.is_tensor(obj) else set()


def _resolve(model: nn.Module, target: str):
    obj = model
    for part in target.split("."):
        obj = getattr(obj, part)
    return obj


def _structure(model: nn.Module) -> tuple:
    """Return what a split depends on: every module, parameter and buffer object under its name."""
    sig: list = [(n, id(m), type(m), id(m.__dict__.get("forward"))) for n, m in model.named_modules(remove_duplicate=False)]
    sig += [(n, id(t)) for n, t in model.named_parameters(remove_duplicate=False)]
    sig += [(n, id(t)) for n, t in model.named_buffers(remove_duplicate=False)]
    return tuple(sig)


_SPLITS: list[tuple[weakref.ref, tuple, tuple, tuple]] = []  # (model, names, structure, result)
SPLIT_MEMO = 8


def choose_split(model: nn.Module, chosen_names, enabled: bool | None = None) -> tuple[Split | None, str]:
    """Return (split, '') when a frozen prefix will be cached for this subset, else (None, why not)."""
    if not (is_enabled() if enabled is None else enabled):
        return None, "turned off"
    chosen = set(chosen_names)
    if all(n in chosen for n, _ in model.named_parameters()):
        return None, "every parameter is linearized"
    return find_split(model, chosen_names)


def model_dtype(split: Split) -> torch.dtype | None:
    """Return the one floating dtype of the prefix's own parameters and buffers (None: none, or mixed)."""
    found = {t.dtype for t in split.state if t.is_floating_point()}
    return found.pop() if len(found) == 1 else None


def run_dtype(split: Split, engine: torch.dtype, mode: PrefixDtype | str = PrefixDtype.MODEL) -> torch.dtype:
    """Return the dtype the prefix runs in: the engine's for 'engine', else the model's unless the engine's is narrower."""
    own = model_dtype(split)
    if PrefixDtype(mode) == PrefixDtype.ENGINE or own is None:
        return engine
    return engine if torch.finfo(engine).eps > torch.finfo(own).eps else own


def chunk_rows(X: torch.Tensor, dtype: torch.dtype, device: torch.device, cap: int) -> int:
    """Return how many rows of X the prefix takes per chunk: PREFIX_CHUNK_BYTES of input on the CPU, else `cap`."""
    if device.type != "cpu" or X.dim() == 0 or X.shape[0] == 0:
        return cap
    itemsize = torch.finfo(dtype).bits // 8 if X.is_floating_point() else X.element_size()
    return max(1, min(cap, PREFIX_CHUNK_BYTES // max(1, X[0].numel() * itemsize)))


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def describe(
    split: Split | None, reason: str, features: int | None, engine: torch.dtype = torch.float64,
    mode: PrefixDtype | str = PrefixDtype.MODEL, dtype: torch.dtype | None = None,
) -> str:
    """Return the plan's line: the frozen prefix that is cached (``features`` per input, its dtype), or why none is.

    `engine` is the dtype the features are cast to and `mode` the prefix_dtype setting, so the planner
    (before any fit) and a fitted LinearizedModel say the same; `dtype` is the run dtype when a probe
    changed it, and `reason` then says why.
    """
    if split is None:
        return f"no frozen prefix: {reason}"
    size = f"{features:,}" if features is not None else "(after the first data)"
    dtype = dtype or run_dtype(split, engine, mode)
    how = f"run in {_dtype_name(dtype)}"
    if dtype != engine:
        how += f", the model's dtype, features cast to {_dtype_name(engine)}"
    if reason:
        how += f" ({reason})"
    return (
        f"frozen prefix cached: {size} features per input ({how}; {split.route} split "
        f"{split.boundary}; {split.frozen_numel:,} frozen parameters run once per input)"
    )


def features_per_input(split: Split, X: torch.Tensor) -> int | None:
    """Return how many features the prefix gives one input of X (None when it cannot run on X)."""
    dtype = next((t.dtype for t in split.state if t.is_floating_point()), None)
    # One input, in the model's own dtype.
    row = X[:1].to(dtype) if dtype is not None and X.is_floating_point() else X[:1]
    try:
        with torch.no_grad(), _eval_mode(split.prefix):
            Z = split.prefix(row)
    except Exception:  # noqa: BLE001 - only a number for the plan; the fit verifies the split on data
        return None
    return int(Z[0].numel()) if torch.is_tensor(Z) and Z.dim() and Z.shape[0] == 1 else None


def find_split(model: nn.Module, chosen_names) -> tuple[Split | None, str]:
    """Return (split, '') for the latest frozen prefix, or (None, why there is none).

    Tracing a large body costs ~0.1 s, so the answer is remembered per model and subset while the
    model keeps the same module, parameter and buffer objects (every split is re-verified on data).
    """
    names, structure = tuple(chosen_names), _structure(model)
    for ref, n, st, result in _SPLITS:
        if ref() is model and n == names and st == structure:
            return result
    result = _find_split(model, names)
    _SPLITS.append((weakref.ref(model), names, structure, result))
    del _SPLITS[:-SPLIT_MEMO]
    return result


def _find_split(model: nn.Module, chosen_names) -> tuple[Split | None, str]:
    params = dict(model.named_parameters(remove_duplicate=False))
    chosen = {id(params[n]) for n in chosen_names if n in params}
    try:
        with _eval_mode(model):
            traced = fx.symbolic_trace(model)
    except Exception as exc:  # noqa: BLE001 - any tracing failure means: use another route
        why = f"{type(exc).__name__}: {str(exc).splitlines()[0][:120] if str(exc) else ''}"
        if type(model).forward is nn.Sequential.forward and isinstance(model, nn.Sequential):
            return _sequential_split(model, chosen)
        return None, f"the model cannot be traced by torch.fx ({why}) and is not an nn.Sequential"
    return _fx_split(model, traced.graph, chosen)


def _sequential_split(model: nn.Sequential, chosen: set[int]) -> tuple[Split | None, str]:
    children = list(model.named_children())
    first = next((i for i, (_, m) in enumerate(children) if _tensor_ids(m) & chosen), None)
    if first is None:
        return None, "no linearized parameter is inside the Sequential's layers"
    if first == 0:
        return None, f"the first layer ({children[0][0]}) is linearized"
    prefix = nn.Sequential(OrderedDict(children[:first]))
    suffix = nn.Sequential(OrderedDict(children[first:]))
    return _make(model, prefix, suffix, "nn.Sequential", f"before {children[first][0]}")


def _fx_split(model: nn.Module, graph: fx.Graph, chosen: set[int]) -> tuple[Split | None, str]:
    nodes = list(graph.nodes)
    inputs = [n for n in nodes if n.op == "placeholder"]
    if len(inputs) != 1:
        return None, f"the forward takes {len(inputs)} inputs, not one"
    index = {n: i for i, n in enumerate(nodes)}

    def touches(n: fx.Node) -> bool:
        if n.op in ("call_module", "get_attr"):
            return bool(_tensor_ids(_resolve(model, n.target)) & chosen)
        return False

    first = next((i for i, n in enumerate(nodes) if touches(n)), None)
    if first is None:
        return None, "the linearized parameters are not used in the traced forward"
    last_use = {n: max((index[u] for u in n.users), default=-1) for n in nodes}

    def live(i: int) -> list[fx.Node]:
        # Values computed at or before node i and still read after it (constants are copied instead).
        return [n for n in nodes[: i + 1] if n.op != "get_attr" and last_use[n] > i]

    for i in range(first - 1, -1, -1):
        crossing = live(i)
        if len(crossing) == 1 and crossing[0].op not in ("placeholder", "output"):
            return _build_fx(model, graph, nodes, i, crossing[0])
    first_node = nodes[first]
    crossing = [n for n in live(first - 1) if n.op != "output"]
    if [n.op for n in crossing] == ["placeholder"]:
        return None, f"the linearized parameters are used from the first operation on the input ({first_node.target})"
    names = ", ".join(n.name for n in crossing)
    return None, (
        f"no single tensor separates the frozen layers from the linearized ones: {names} all reach "
        f"{first_node.target} or later (a skip connection around the boundary)"
    )


def _build_fx(model: nn.Module, graph: fx.Graph, nodes: list[fx.Node], cut: int, h: fx.Node):
    head, env = fx.Graph(), {}
    for n in nodes[: cut + 1]:
        env[n] = head.node_copy(n, lambda a: env[a])
    head.output(env[h])

    tail = fx.Graph()
    env = {h: tail.placeholder("features")}

    def arg(a: fx.Node) -> fx.Node:
        if a not in env:  # a constant or parameter read before the cut: read it again here
            env[a] = tail.node_copy(a, lambda b: env[b])
        return env[a]

    for n in nodes[cut + 1 :]:
        env[n] = tail.node_copy(n, arg)
    first = next(n for n in nodes[cut + 1 :] if n.op != "get_attr")
    where = first.target if first.op == "call_module" else first.name
    parts = []
    for g in (head, tail):
        gm = fx.GraphModule(model, g)
        gm.graph.eliminate_dead_code()  # parameters only the other side reads
        gm.recompile()
        parts.append(gm)
    return _make(model, parts[0], parts[1], "torch.fx", f"before {where}")


def _make(model: nn.Module, prefix: nn.Module, suffix: nn.Module, route: str, boundary: str):
    names = dict(prefix.named_parameters(remove_duplicate=False))
    names.update(dict(prefix.named_buffers(remove_duplicate=False)))
    own = {id(t) for t in names.values()}
    # Key the cache on the user's own tensors; the engine works on copies made at construction.
    state = [t for _, t in model.named_parameters(remove_duplicate=False) if id(t) in own]
    state += [t for _, t in model.named_buffers(remove_duplicate=False) if id(t) in own]
    frozen = sum(p.numel() for _, p in prefix.named_parameters())
    return Split(prefix, suffix, route, boundary, frozen, state), ""


@dataclass(eq=False)  # found by identity: comparing tensors would be elementwise
class _Entry:
    model: weakref.ref
    key: tuple
    state: list[tuple[weakref.ref, int]]
    sources: list[tuple[weakref.ref, int]]  # tensors known to hold `inputs` (identity / view lookups)
    inputs: torch.Tensor  # a private copy of it (equality lookups, verification of views)
    features: torch.Tensor
    features_version: int  # an in-place change of the features (by a suffix) retires the entry
    probe: tuple[bool, float | None] = (False, None)  # whether the storer's probe passed, and its error

    @property
    def nbytes(self) -> int:
        return self.inputs.nbytes + self.features.nbytes


class FeatureCache:
    """The prefix's features of the last few input sets, least recently used evicted first."""

    def __init__(self, max_entries: int = CACHE_ENTRIES, max_bytes: int = CACHE_BYTES) -> None:
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self._entries: list[_Entry] = []
        self.hits = 0
        self.misses = 0

    def clear(self) -> None:
        """Forget every cached feature set (and reset the counters)."""
        self._entries.clear()
        self.hits = self.misses = 0

    def _valid(self, e: _Entry, model: nn.Module, key: tuple, state: list[tuple[torch.Tensor, int]]) -> bool:
        if e.model() is not model or e.key != key or len(e.state) != len(state):
            return False
        return all(r() is t and v == w for (r, v), (t, w) in zip(e.state, state))

    def lookup(self, model: nn.Module, key: tuple, state, X: torch.Tensor) -> tuple[torch.Tensor, tuple] | None:
        """Return the cached features of X (or of the rows X is a slice of) and the storer's probe, else None.

        The probe is (passed, error) of the LinearizedModel that stored them: same model, same weights
        and same key, so a second model served from the cache need not probe (it may be inside a
        product's layer hooks when it first sees new inputs)."""
        for e in reversed(self._entries):
            if not self._valid(e, model, key, state):
                continue
            Z = self._match(e, X)
            if Z is not None:
                self._entries.remove(e)
                self._entries.append(e)
                self.hits += 1
                return Z, e.probe
        self.misses += 1
        return None

    @staticmethod
    def _match(e: _Entry, X: torch.Tensor) -> torch.Tensor | None:
        if e.features._version != e.features_version:
            return None
        e.sources = [(r, v) for r, v in e.sources if r() is not None]
        for r, v in e.sources:
            if r() is X and X._version == v:
                return e.features
        if X.dtype != e.inputs.dtype or X.device != e.inputs.device or X.shape[1:] != e.inputs.shape[1:]:
            return None
        if X.dim() > 0:
            for r, v in e.sources:
                src = r()
                rows = _rows_of(X, src) if src is not None and src._version == v else None
                if rows is not None and torch.equal(X, e.inputs[rows]):
                    return e.features[rows]
        if X.shape == e.inputs.shape and torch.equal(X, e.inputs):
            # Remember this copy too, so its chunks (views) are found without a full comparison.
            e.sources = (e.sources + [(weakref.ref(X), X._version)])[-SOURCES:]
            return e.features
        return None

    def store(self, model: nn.Module, key: tuple, state, X: torch.Tensor, Z: torch.Tensor,
              probe: tuple[bool, float | None] = (False, None)) -> None:
        """Remember Z as the features of X (skipped when the pair alone exceeds the byte budget)."""
        inputs = X.detach().clone()
        if inputs.nbytes + Z.nbytes > self.max_bytes:
            return
        entry = _Entry(
            weakref.ref(model), key, [(weakref.ref(t), v) for t, v in state], [(weakref.ref(X), X._version)], inputs, Z,
            Z._version, probe,
        )
        self._entries.append(entry)
        while len(self._entries) > self.max_entries or sum(e.nbytes for e in self._entries) > self.max_bytes:
            self._entries.pop(0)


def _rows_of(X: torch.Tensor, base: torch.Tensor) -> slice | None:
    """Return the rows of `base` that X views (a contiguous row slice), or None."""
    if X.dim() != base.dim() or X.stride() != base.stride() or base.stride(0) == 0:
        return None
    if X.untyped_storage().data_ptr() != base.untyped_storage().data_ptr():
        return None
    offset = X.storage_offset() - base.storage_offset()
    if offset % base.stride(0):
        return None
    start = offset // base.stride(0)
    if start < 0 or start + X.shape[0] > base.shape[0]:
        return None
    return slice(start, start + X.shape[0])


CACHE = FeatureCache()


def clear_cache() -> None:
    """Forget all cached prefix features (benchmarks call this before every timed repeat)."""
    CACHE.clear()
