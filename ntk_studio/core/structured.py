"""Structured features (Novak et al., ICML 2022): per-layer inputs and output signals instead of J.

A Linear layer (on (n, in) or (n, *, in) inputs) and a Conv2d layer (through ``F.unfold`` patches:
stride, padding, dilation, groups, bias) act on unfolded inputs U, so a sample's weight gradient for
output k is Σ_l G[k, l]ᵀ U[l] over positions l and its bias gradient Σ_l G[k, l], G being the signal
backpropagated to the layer's output. One forward and K backward passes over the data give U and G
for every layer; from then on kernel blocks, J·v and Jᵀ·u are matrix products (:mod:`.structured_ops`)
with no forward or backward pass. Models it does not cover — linearized parameters in other layer
types (BatchNorm, LayerNorm, Embedding, Conv1d…), non-zero padding modes, shared weights, a layer
called twice — use the generic torch.func path; :attr:`StructuredKernel.reason` says why, and
:meth:`StructuredKernel.check` verifies the structured kernel against torch.func on a few samples
before it is trusted.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

from . import structured_ops as ops
from .caching import LastInputCache
from .structured_ops import LayerFeatures

if TYPE_CHECKING:  # pragma: no cover
    from .linearized import LinearizedModel

PROBE_SAMPLES = 3
PROBE_RTOL = 1e-6
FEATURE_CHUNK_BYTES = 256 * 1024**2  # factors of one chunk while features are extracted
FEATURE_OVERHEAD = 3  # activations and graph held per chunk, as a multiple of its factors (rough)


class StructuredKernel:
    """Kernel matrices, diagonals and products from per-layer features, for Linear and Conv2d layers."""

    def __init__(self, lm: LinearizedModel) -> None:
        self.lm = lm
        self.reason = ""
        self.layers: dict[str, tuple[str | None, str | None]] = {}  # module -> (weight name, bias name)
        self._sample_bytes = 0  # temporaries per sample while extracting (chunk size)
        self._kept_sample_bytes = 0  # kept features per sample (the product cache's budget check)
        self.supported = self._static_check()
        self._checked = False
        # The right-hand set is usually the training set, reused for every test chunk.
        self._features_cached = LastInputCache(self.features)

    def _static_check(self) -> bool:
        modules = dict(self.lm.model.named_modules())
        owners: dict[str, list[str]] = {}
        for name in self.lm.subset.names:
            owner, _, leaf = name.rpartition(".")
            owners.setdefault(owner, []).append(leaf)
        for owner, leaves in owners.items():
            module = modules.get(owner)
            why = _refusal(owner or "the root module", module, leaves)
            if why:
                self.reason = why
                return False
            prefix = f"{owner}." if owner else ""
            self.layers[owner] = (
                prefix + "weight" if "weight" in leaves else None,
                prefix + "bias" if "bias" in leaves else None,
            )
        seen: dict[int, str] = {}
        for name, p in self.lm.model.named_parameters(remove_duplicate=False):
            if id(p) in seen and seen[id(p)] != name:
                self.reason = f"weights are shared ({seen[id(p)]} and {name})"
                return False
            seen[id(p)] = name
        return True

    def check(self, X: torch.Tensor) -> bool:
        """Return whether the structured form applies, verified against torch.func on a few samples (once)."""
        if not self.supported or self._checked:
            return self.supported
        try:
            probe = self.lm.prepare(X)[:PROBE_SAMPLES]
            fast = self.matrix(probe, probe)
        except _Unsupported as exc:
            self.reason = str(exc)
            self.supported = False
            return False
        J = self.lm.jacobian(probe).reshape(-1, self.lm.num_params)
        ref = J @ J.T
        ok = bool(torch.allclose(fast, ref, rtol=PROBE_RTOL, atol=PROBE_RTOL * float(ref.abs().max())))
        if not ok:
            self.reason = "the structured kernel disagreed with torch.func on a probe (the model uses a layer's weights outside its forward)"
            self.supported = False
        self._checked = True
        return ok

    # ------------------------------------------------------------ features
    def features(self, X: torch.Tensor, rows: slice | None = None) -> list[LayerFeatures]:
        """Return per-layer features for the samples X[rows] (one forward, K backward passes per chunk)."""
        X = self.lm.prepare(X)
        if rows is not None:
            X = X[rows]
        step = self.lm.chunk_size
        if self._sample_bytes:
            step = max(1, min(step, FEATURE_CHUNK_BYTES // self._sample_bytes))
        # Gradients are needed even when called under no_grad (e.g. inside linear_operator's
        # autograd Functions, which run their forward with grad mode off).
        with torch.enable_grad():
            parts = [self._chunk_features(X[s]) for s in self.lm.chunks(X.shape[0], step)]
        if not parts:
            return []
        out = []
        for layer in zip(*parts):
            cat = (lambda attr: None if getattr(layer[0], attr) is None else torch.cat([getattr(f, attr) for f in layer]))
            out.append(LayerFeatures(layer[0].weight, layer[0].bias, cat("U"), cat("G"), cat("J")))
        return out

    def _chunk_features(self, X: torch.Tensor) -> list[LayerFeatures]:
        lm = self.lm
        modules = dict(lm.model.named_modules())
        unfolded: dict[str, torch.Tensor] = {}
        probes: dict[str, torch.Tensor] = {}

        def hook_for(name: str):
            def hook(module, args, output):
                if name in unfolded:
                    raise _Unsupported(f"{name} is called more than once per forward")
                unfolded[name] = _unfold(name, module, args[0].detach(), output)
                # A zero leaf added to the output: its gradient is ∂f/∂(layer output).
                probes[name] = torch.zeros_like(output, requires_grad=True)
                return output + probes[name]

            return hook

        handles = [modules[name].register_forward_hook(hook_for(name)) for name in self.layers]
        try:
            with torch.enable_grad():
                out = lm._f(lm.theta, X)
        finally:
            for h in handles:
                h.remove()
        names = list(self.layers)
        missing = [n for n in names if n not in probes]
        if missing:
            raise _Unsupported(f"{', '.join(missing)} never ran in the forward pass")
        K = out.shape[1]
        lm._output_dim = K
        grads: list[list[torch.Tensor]] = [[] for _ in names]
        for k in range(K):
            gk = torch.autograd.grad(out[:, k].sum(), [probes[n] for n in names], retain_graph=k < K - 1, allow_unused=True)
            for i, g in enumerate(gk):
                grads[i].append(torch.zeros_like(probes[names[i]]) if g is None else g)
        feats, total, kept = [], 0, 0
        for i, name in enumerate(names):
            U = unfolded[name]
            G = torch.stack([_positions(modules[name], g, U) for g in grads[i]], dim=1)  # (n, K, L, g, o)
            weight, bias = self.layers[name]
            f = LayerFeatures(weight, bias, U if weight else None, G)
            total += f.nbytes()
            feats.append(_compact(f))
            kept += feats[-1].nbytes()
        m = max(1, X.shape[0])
        self._sample_bytes = max(self._sample_bytes, FEATURE_OVERHEAD * total // m)
        self._kept_sample_bytes = max(self._kept_sample_bytes, -(-kept // m))
        return feats

    # ------------------------------------------------------------ dense kernels
    def matrix(self, X1: torch.Tensor, X2: torch.Tensor, independent: bool = False) -> torch.Tensor:
        """Return the dense kernel J(X1) J(X2)ᵀ of size (n1·K, n2·K), sample-major."""
        F2 = self._features_cached(X2)
        F1 = F2 if X1 is X2 else self.features(X1)
        return self.matrix_from(F1, F2, independent)

    def matrix_from(self, F1: list[LayerFeatures], F2: list[LayerFeatures], independent: bool = False) -> torch.Tensor:
        """Return J(X1) J(X2)ᵀ (n1·K, n2·K) from both sides' features."""
        n1, K = F1[0].n, F1[0].G.shape[1] if F1[0].G is not None else F1[0].J.shape[1]
        n2 = F2[0].n
        total = torch.zeros(n1, K, n2, K, dtype=self.lm.dtype, device=self.lm.device)
        for f1, f2 in zip(F1, F2):
            ops.kernel_block(f1, f2, total, independent)
        return total.reshape(n1 * K, n2 * K)

    def diag(self, X: torch.Tensor) -> torch.Tensor:
        """Return ‖J_k(x_i)‖² as (n, K)."""
        return sum(ops.diag(f) for f in self.features(X))

    def feature_bytes(self, n: int) -> int:
        """Return the bytes n samples' kept features take (per-sample size measured by the probe in :meth:`check`)."""
        return self._kept_sample_bytes * n


class StructuredProducts:
    """J·v and Jᵀ·u over some rows from their kept per-layer features: matrix products, no network pass."""

    def __init__(self, lm: LinearizedModel, features: list[LayerFeatures]) -> None:
        self.lm = lm
        self.features = features
        self.shapes = dict(zip(lm.subset.names, lm.subset.shapes))
        self.nbytes = sum(f.nbytes() for f in features)

    def jvp(self, v: torch.Tensor) -> torch.Tensor:
        """Return J v as (c, n_rows, K) for flat tangents v (c, P)."""
        tangents = self.lm.subset.unflatten(v)
        self.lm.check_cancel()
        return sum(ops.jvp(f, tangents, self.shapes) for f in self.features)

    def vjp(self, u: torch.Tensor) -> torch.Tensor:
        """Return Jᵀ u as (c, P) for u of shape (c, n_rows, K)."""
        grads: dict[str, torch.Tensor] = {}
        self.lm.check_cancel()
        for f in self.features:
            grads.update(ops.vjp(f, u, self.shapes))
        return self.lm.subset.flatten(grads, batch_dims=1)


def _refusal(owner: str, module: nn.Module | None, leaves: list[str]) -> str:
    """Return why the layer holding linearized `leaves` has no structured form here ('' if it has)."""
    if not isinstance(module, (nn.Linear, nn.Conv2d)):
        kind = "no module" if module is None else type(module).__name__
        return f"parameters of {owner} are in {kind}, which has no structured form here (Linear and Conv2d have one)"
    extra = [leaf for leaf in leaves if leaf not in ("weight", "bias")]
    if extra:
        return f"{owner} holds linearized parameters other than weight and bias ({', '.join(extra)})"
    if isinstance(module, nn.Conv2d):
        if module.padding_mode != "zeros":
            return f"{owner} pads with mode '{module.padding_mode}' (unfold pads with zeros only)"
        if isinstance(module.padding, str) and module.padding == "same":
            if any(d * (k - 1) % 2 for d, k in zip(module.dilation, module.kernel_size)):
                return f"{owner} uses padding='same' with an even effective kernel (asymmetric padding)"
    return ""


def _conv_padding(module: nn.Conv2d) -> tuple[int, int]:
    if isinstance(module.padding, str):
        if module.padding == "valid":
            return (0, 0)
        return tuple(d * (k - 1) // 2 for d, k in zip(module.dilation, module.kernel_size))
    return tuple(module.padding)


def _unfold(name: str, module: nn.Module, x: torch.Tensor, output: torch.Tensor) -> torch.Tensor:
    """Return the layer's unfolded input (n, L, g, a) for the batch x."""
    if isinstance(module, nn.Conv2d):
        if x.dim() != 4:
            raise _Unsupported(f"{name} sees inputs of shape {tuple(x.shape)}, not (n, C, H, W)")
        n, g = x.shape[0], module.groups
        cols = F.unfold(x, module.kernel_size, module.dilation, _conv_padding(module), module.stride)  # (n, C·kh·kw, L)
        L = cols.shape[-1]
        if L != output.shape[-1] * output.shape[-2]:
            raise _Unsupported(f"{name}'s unfolded input does not match its output positions")
        return cols.view(n, g, -1, L).permute(0, 3, 1, 2)
    if x.dim() < 2:
        raise _Unsupported(f"{name} sees inputs of shape {tuple(x.shape)}, not (n, …, features)")
    return x.reshape(x.shape[0], -1, 1, x.shape[-1])


def _positions(module: nn.Module, grad: torch.Tensor, U: torch.Tensor) -> torch.Tensor:
    """Return an output-shaped signal as (n, L, g, o), positions aligned with the unfolded input."""
    n, L, g = U.shape[:3]
    if isinstance(module, nn.Conv2d):
        return grad.reshape(n, g, -1, L).permute(0, 3, 1, 2)
    return grad.reshape(n, L, 1, grad.shape[-1])


def _compact(f: LayerFeatures) -> LayerFeatures:
    """Return the smaller of the factors and the per-sample Jacobian (factors always for one position)."""
    n, K, L, g, o = f.G.shape
    if L == 1:
        return f
    a = 0 if f.U is None else f.U.shape[-1]
    layer_params = g * o * a * (f.weight is not None) + g * o * (f.bias is not None)
    if K * layer_params < L * g * (a + K * o):
        return LayerFeatures(f.weight, f.bias, J=f.jacobian())
    return f


class _Unsupported(Exception):
    """Raised inside the hooks when a model falls outside the structured form."""
