"""The structured NTK for Linear layers (Novak et al., ICML 2022): no P-sized object is ever formed.

For a Linear layer with per-sample input a_i and backpropagated output signal g_i (one per model
output k), its share of the kernel is (a_i·a_j + 1)(g_ik·g_jl) for weight and bias, so
K = Σ_layers (A Aᵀ + 1) ⊙ (G Gᵀ) needs one forward and K backward passes over the data.
Models it does not cover (convolutions, weight sharing, sequence inputs, parameters outside Linear
layers) use the generic torch.func path; :meth:`StructuredKernel.check` decides, and verifies the
result against the generic path on a few samples before the structured form is trusted.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from .caching import LastInputCache
from .linearized import LinearizedModel

PROBE_SAMPLES = 3
PROBE_RTOL = 1e-6


@dataclass
class LayerFeatures:
    """One Linear layer's per-sample inputs A (n, in) and output signals G (n, K, out)."""

    A: torch.Tensor | None  # None when the weight is not linearized
    G: torch.Tensor
    has_bias: bool


class StructuredKernel:
    """Kernel matrices and diagonals from per-layer features, for models made of Linear layers."""

    def __init__(self, lm: LinearizedModel) -> None:
        self.lm = lm
        self.reason = ""
        self.layers: dict[str, tuple[bool, bool]] = {}  # module -> (weight chosen, bias chosen)
        self.supported = self._static_check()
        # The right-hand set is usually the training set, reused for every test chunk.
        self._features_cached = LastInputCache(self.features)

    def _static_check(self) -> bool:
        modules = dict(self.lm.model.named_modules())
        owners: dict[str, list[str]] = {}
        for name in self.lm.subset.names:
            owner, _, leaf = name.rpartition(".")
            owners.setdefault(owner, []).append(leaf)
        for owner, leaves in owners.items():
            if not isinstance(modules.get(owner), nn.Linear):
                self.reason = f"parameters of {owner or 'the root module'} are not in an nn.Linear"
                return False
            self.layers[owner] = ("weight" in leaves, "bias" in leaves)
        seen: dict[int, str] = {}
        for name, p in self.lm.model.named_parameters(remove_duplicate=False):
            if id(p) in seen and seen[id(p)] != name:
                self.reason = f"weights are shared ({seen[id(p)]} and {name})"
                return False
            seen[id(p)] = name
        return True

    def check(self, X: torch.Tensor) -> bool:
        """Return whether the structured form applies, verified against torch.func on a few samples."""
        if not self.supported:
            return False
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
            self.reason = "the structured kernel disagreed with torch.func on a probe (the model uses a Linear layer's weights outside its forward)"
            self.supported = False
        return ok

    def features(self, X: torch.Tensor) -> list[LayerFeatures]:
        """Return per-layer (A, G) for the samples X (one forward, K backward passes per chunk)."""
        X = self.lm.prepare(X)
        # Gradients are needed even when called under no_grad (e.g. inside linear_operator's
        # autograd Functions, which run their forward with grad mode off).
        with torch.enable_grad():
            parts = [self._chunk_features(X[s]) for s in self.lm.chunks(X.shape[0])]
        out = []
        for layer in zip(*parts):
            A = None if layer[0].A is None else torch.cat([f.A for f in layer])
            out.append(LayerFeatures(A, torch.cat([f.G for f in layer]), layer[0].has_bias))
        return out

    def _chunk_features(self, X: torch.Tensor) -> list[LayerFeatures]:
        lm = self.lm
        modules = dict(lm.model.named_modules())
        inputs: dict[str, torch.Tensor] = {}
        probes: dict[str, torch.Tensor] = {}

        def hook_for(name: str):
            def hook(module, args, output):
                if name in inputs:
                    raise _Unsupported(f"{name} is called more than once per forward")
                if args[0].dim() != 2:
                    raise _Unsupported(f"{name} sees inputs of shape {tuple(args[0].shape)}, not (n, features)")
                inputs[name] = args[0].detach()
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
        grads = [[] for _ in names]
        for k in range(K):
            gk = torch.autograd.grad(out[:, k].sum(), [probes[n] for n in names], retain_graph=k < K - 1, allow_unused=True)
            for i, g in enumerate(gk):
                grads[i].append(torch.zeros_like(probes[names[i]]) if g is None else g)
        feats = []
        for i, name in enumerate(names):
            w, b = self.layers[name]
            feats.append(LayerFeatures(inputs[name] if w else None, torch.stack(grads[i], dim=1), b))
        return feats

    def matrix(self, X1: torch.Tensor, X2: torch.Tensor, independent: bool = False) -> torch.Tensor:
        """Return the dense kernel J(X1) J(X2)ᵀ of size (n1·K, n2·K), sample-major."""
        F2 = self._features_cached(X2)
        F1 = F2 if X1 is X2 else self.features(X1)
        n1, K = F1[0].G.shape[:2]
        n2 = F2[0].G.shape[0]
        total = torch.zeros(n1, K, n2, K, dtype=self.lm.dtype, device=self.lm.device)
        idx = torch.arange(K, device=self.lm.device)
        # In-place accumulation: peak memory is the result plus one n1×n2 and one n1·K×n2·K temporary.
        for f1, f2 in zip(F1, F2):
            if f1.A is not None:
                scale = f1.A @ f2.A.T
                if f1.has_bias:
                    scale.add_(1.0)
            else:
                scale = torch.ones(n1, n2, dtype=self.lm.dtype, device=self.lm.device)
            if independent:
                gg = torch.einsum("iko,jko->kij", f1.G, f2.G).mul_(scale)
                total[:, idx, :, idx] += gg
            else:
                gg = (f1.G.reshape(n1 * K, -1) @ f2.G.reshape(n2 * K, -1).T).view(n1, K, n2, K)
                total.add_(gg.mul_(scale[:, None, :, None]))
            del gg, scale
        return total.reshape(n1 * K, n2 * K)

    def diag(self, X: torch.Tensor) -> torch.Tensor:
        """Return ‖J_k(x_i)‖² as (n, K)."""
        total = None
        for f in self.features(X):
            scale = torch.zeros(f.G.shape[0], dtype=self.lm.dtype, device=self.lm.device)
            if f.A is not None:
                scale = scale + (f.A * f.A).sum(-1)
            if f.has_bias:
                scale = scale + 1.0
            part = scale[:, None] * (f.G * f.G).sum(-1)
            total = part if total is None else total + part
        return total


class _Unsupported(Exception):
    """Raised inside the hooks when a model falls outside the structured form."""
