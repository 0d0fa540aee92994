"""The linearized network: f(x; θ*), and matrix-free J v, Jᵀ u, kernel and GGN products over a parameter subset.

Everything is built on ``torch.func`` (``functional_call``, ``jvp``, ``vjp``, ``vmap``, ``jacrev``), so
any layer torch can differentiate works. Data are always visited through :meth:`LinearizedModel.chunks`:
the single seam where chunking and cancellation happen. :meth:`LinearizedModel.local_chunks` is the
same loop over this rank's rows only; the operators then combine ranks with one all-reduce (sums over
data) or all-gather (per-sample results) through :attr:`LinearizedModel.shard` (see :mod:`.distributed`).
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import torch
from torch import nn
from torch.func import functional_call, jacrev, jvp, vjp, vmap

from . import prefix as _prefix
from .caching import InputCache
from .distributed import SINGLE_PROCESS, SingleProcess
from .errors import SettingsError, ShapeError
from .options import choice
from .params import ParamSpec, ParamSubset
from .primal_cache import PrimalCache
from .progress import Reporter
from .structured import StructuredKernel, StructuredProducts

DEFAULT_CHUNK_SIZE = 1024
DEFAULT_MEMORY_BUDGET = 2 * 1024**3  # bytes for any dense object the engine materializes
JACOBIAN_CHUNK_BYTES = 256 * 1024**2  # one chunk of the dense Jacobian (chunk · K · P floats)
FD_DEFAULT_EPS = {torch.float64: 1e-5, torch.float32: 1e-3}
OPERATOR_CACHE_BYTES = 1024**3  # features / graphs kept for repeated products on the same inputs
PRODUCT_ROUTES = ("auto", "forward_mode", "primal", "double_backward", "recompute")


class LinearizedModel:
    """A pretrained model linearized around its weights θ* in a chosen parameter subset.

    The model is evaluated in eval mode (BatchNorm uses running statistics, dropout is off), so
    every sample's output depends on that sample only; its own train/eval flags are restored after
    each call. Parameters and floating buffers are copied to `dtype` and `device`; the user's
    module keeps its own weights untouched. A frozen prefix (see :mod:`.prefix`) runs in the
    model's own dtype (`prefix_dtype="model"`) or in `dtype` (`"engine"`); its features are cast to `dtype`.
    """

    def __init__(
        self,
        model: nn.Module,
        params: ParamSpec = "all",
        dtype: torch.dtype = torch.float64,
        device: torch.device | str | None = None,
        chunk_size: int = DEFAULT_CHUNK_SIZE,
        shard: SingleProcess | None = None,
        prefix: bool | None = None,
        prefix_dtype: str = "model",
    ) -> None:
        self.model = model
        # Which rows of each data set this process works on; the default owns them all.
        self.shard = shard or SINGLE_PROCESS
        self.subset = ParamSubset.from_spec(model, params)
        self.dtype = dtype
        if device is None:
            first = next(iter(model.parameters()), None)
            device = first.device if first is not None else torch.device("cpu")
        self.device = torch.device(device)
        self.chunk_size = int(chunk_size)
        self.reporter: Reporter | None = None
        chosen = set(self.subset.names)
        self.theta = {
            n: p.detach().to(device=self.device, dtype=dtype) for n, p in model.named_parameters() if n in chosen
        }
        self.frozen = {
            n: p.detach().to(device=self.device, dtype=dtype) for n, p in model.named_parameters() if n not in chosen
        }
        for n, b in model.named_buffers():
            self.frozen[n] = b.detach().to(device=self.device, dtype=dtype if b.is_floating_point() else b.dtype)
        self._output_dim: int | None = None
        # Tied weights appear under several names. torch 2.13's functional_call does not put tied
        # parameters back after a torch.func transform (the module keeps a wrapped tensor), so we
        # name every alias explicitly and restore the original slots ourselves.
        canonical: dict[int, str] = {}
        self._aliases: dict[str, str] = {}
        named = list(model.named_parameters(remove_duplicate=False)) + list(model.named_buffers(remove_duplicate=False))
        for name, t in named:
            first = canonical.setdefault(id(t), name)
            if first != name:
                self._aliases[name] = first
        self._slots = []
        if self._aliases:
            for module in model.modules():
                for store in (module._parameters, module._buffers):
                    self._slots.extend((store, key, t) for key, t in store.items())
        self._init_operators()
        self._init_prefix(_prefix.is_enabled() if prefix is None else prefix, prefix_dtype)

    # ------------------------------------------------------------ frozen prefix (see .prefix)
    def _init_prefix(self, enabled: bool, prefix_dtype: str = "model") -> None:
        # "model": the frozen prefix runs in the model's own dtype and its features are cast to
        # self.dtype; "engine": it runs in self.dtype (see .prefix).
        self.prefix_dtype = choice(_prefix.PrefixDtype, prefix_dtype, "prefix_dtype")
        self.prefix: _prefix.Split | None = None
        self._prefix_features: int | None = None
        self._prefix_probe_error: float | None = None
        self.prefix, self._prefix_reason = _prefix.choose_split(self.model, self.subset.names, enabled)
        if self.prefix is not None:
            self._prefix_state = [(t, t._version) for t in self.prefix.state]
            self._prefix_checked = False
            self._prefix_dtype = _prefix.run_dtype(self.prefix, self.dtype, self.prefix_dtype)
            self._prefix_cast: tuple[torch.device, dict[str, torch.Tensor]] | None = None
            if self._aliases:
                seen = {id(m) for m in self.model.modules()}
                for part in (self.prefix.prefix, self.prefix.suffix):
                    for module in part.modules():
                        if id(module) not in seen:
                            for store in (module._parameters, module._buffers):
                                self._slots.extend((store, key, t) for key, t in store.items())

    @property
    def prefix_note(self) -> str:
        """Return one line for the plan: the frozen prefix that is cached (and its dtype), or why there is none."""
        dtype = None if self.prefix is None else self._prefix_dtype
        return _prefix.describe(
            self.prefix, self._prefix_reason, self._prefix_features, self.dtype, self.prefix_dtype, dtype
        )

    @property
    def prefix_run_dtype(self) -> torch.dtype | None:
        """Return the dtype the frozen prefix runs in (None without a prefix)."""
        return None if self.prefix is None else self._prefix_dtype

    @property
    def prefix_probe_error(self) -> float | None:
        """Return max|f_split − f| / max|f| on the probe rows, the split run in the prefix's dtype and the whole model in
        the engine's (None: the same dtype, or no data seen yet)."""
        return self._prefix_probe_error if self.prefix is not None else None

    def _drop_prefix(self, reason: str) -> None:
        self.prefix, self._prefix_reason = None, reason

    def _prefix_values(self) -> dict[str, torch.Tensor]:
        """Return the prefix's tensors in its run dtype on this device, cast once from the engine's copies.

        The engine's copies hold the model's values exactly (a widening cast), so casting back gives
        the user's own weights as they were at construction.
        """
        if self.prefix is None or self._prefix_dtype == self.dtype:
            return self.theta
        if self._prefix_cast is None or self._prefix_cast[0] != self.device:
            wanted = set(self.prefix.names(self.prefix.prefix)) | set(self._aliases.values())
            dtype = self._prefix_dtype
            values = {
                k: t.to(dtype) if t.is_floating_point() else t
                for k, t in {**self.frozen, **self.theta}.items() if k in wanted
            }
            self._prefix_cast = (self.device, values)
        return self._prefix_cast[1]

    def _run_prefix(self, X: torch.Tensor) -> torch.Tensor:
        """Return the prefix's features of prepared X in self.dtype: chunked, no autograd, in its run dtype."""
        split, dtype = self.prefix, self._prefix_dtype
        values = self._prefix_values()
        rows = _prefix.chunk_rows(X, dtype, self.device, self.chunk_size)
        parts = []
        with torch.no_grad():
            for s in self.chunks(X.shape[0], rows):
                Xc = X[s].to(dtype) if X.is_floating_point() else X[s]
                Z = self._call(split.prefix, values, Xc)
                parts.append(Z.to(self.dtype) if Z.is_floating_point() else Z)
            if not parts:
                Z = self._call(split.prefix, values, X.to(dtype) if X.is_floating_point() else X)
                parts.append(Z.to(self.dtype) if Z.is_floating_point() else Z)
        return torch.cat(parts)

    def _inputs(self, X: torch.Tensor, store: bool = True) -> torch.Tensor:
        """Return what the linearized part reads for prepared X: X, or its frozen-prefix features (cached)."""
        split = self.prefix
        if split is None:
            return X
        key = (split.route, split.boundary, self.dtype, self._prefix_dtype, self.device)
        hit = _prefix.CACHE.lookup(self.model, key, self._prefix_state, X)
        if hit is not None:
            Z, (checked, error) = hit
            if checked and not self._prefix_checked:  # the storer probed this model, weights and key
                self._prefix_checked, self._prefix_probe_error = True, error
                self._prefix_features = int(Z[0].numel()) if Z.shape[0] else self._prefix_features
            return Z
        try:
            Z = self._run_prefix(X)
        except (ShapeError, RuntimeError, TypeError) as exc:
            self._drop_prefix(f"the prefix failed on the data ({type(exc).__name__}: {str(exc)[:100]})")
            return X
        if Z.dim() == 0 or Z.shape[0] != X.shape[0]:
            self._drop_prefix(f"the value at the boundary has shape {tuple(Z.shape)}, not one row per input")
            return X
        if not self._prefix_checked and X.shape[0] and not self._probe(X, Z):
            # Dropped (the whole network runs), or switched to the engine's dtype: compute again.
            return X if self.prefix is None else self._inputs(X, store)
        self._prefix_features = int(Z[0].numel()) if Z.shape[0] else self._prefix_features
        if store:
            _prefix.CACHE.store(self.model, key, self._prefix_state, X, Z, (self._prefix_checked, self._prefix_probe_error))
        return Z

    def _probe(self, X: torch.Tensor, Z: torch.Tensor) -> bool:
        """Return whether the split reproduces the whole model (in self.dtype) on a few rows.

        Within the tolerance of the prefix's run dtype: the split is kept and the outputs' relative
        difference is :attr:`prefix_probe_error`. Otherwise, when the prefix ran in a narrower dtype, it
        is checked again in self.dtype: if that agrees, the features' precision was the problem and the
        prefix runs in self.dtype from now on (said in the plan note); if not, the prefix is dropped.
        Returns False when the caller must compute the features again (or use X).
        """
        m = min(_prefix.PROBE_SAMPLES, X.shape[0])
        run = self._prefix_dtype
        with torch.no_grad():
            whole = self._call(self.model, self.theta, X[:m]).reshape(m, -1)
            split_out = self._g(self.theta, Z[:m])
        scale = float(whole.abs().max()) if whole.numel() else 0.0
        diff = float((split_out - whole).abs().max()) / scale if whole.shape == split_out.shape and scale > 0 else None
        rtol = max(_prefix.PROBE_RTOL.get(self.dtype, 1e-3), _prefix.PROBE_RTOL.get(run, 1e-2))
        if whole.shape == split_out.shape and torch.allclose(split_out, whole, rtol=rtol, atol=rtol * scale):
            self._prefix_probe_error = diff if run != self.dtype else None
            self._prefix_checked = True
            return True
        if run != self.dtype:
            self._prefix_dtype = self.dtype
            self._prefix_reason = (
                f"the model's {str(run).removeprefix('torch.')} prefix changed the outputs by {diff:.1e} > {rtol:g} "
                "on a probe" if diff is not None else "the model's dtype failed the probe"
            )
            return False
        self._drop_prefix("the split model disagreed with the whole model on a probe")
        return False

    # ------------------------------------------------------------ kept features for products
    def _init_operators(self) -> None:
        # "auto": structured per-layer features where the model has them (.structured), else the
        # generic kept graphs (.primal_cache: Jᵀ·u one backward, J·v a double backward); "primal" and
        # "double_backward": the generic kept graphs only; "forward_mode": the generic path with J·v by
        # forward mode from a traced tangent program (.tangent_program; cheaper per product, tracing
        # costs 0.3–0.8 s per chunk shape, so for long solves); "recompute": run
        # the network for every product (the pre-#17 behaviour, kept for comparison and as the fallback).
        self.product_route = "auto"
        self.operator_cache_bytes = OPERATOR_CACHE_BYTES
        self.operator_note = ""
        self._structured_kernel: StructuredKernel | None = None
        self._products = InputCache(entries=2)
        self._tangent_programs: dict = {}  # chunk (shape, stride, dtype, device) -> traced J·v program or why not

    @property
    def structured(self) -> StructuredKernel:
        """Return this model's structured-feature helper (one per LinearizedModel, shared with KernelBuilder)."""
        if self._structured_kernel is None:
            self._structured_kernel = StructuredKernel(self)
        return self._structured_kernel

    def clear_operator_cache(self, programs: bool = True) -> None:
        """Forget the features kept for products and (with `programs`) the traced J·v programs (benchmarks time uncached builds)."""
        self._products.clear()
        if programs:
            self._tangent_programs.clear()

    def _product_cache(self, X: torch.Tensor, build: bool):
        """Return what products on X's rows reuse (structured features or kept graphs), or None to recompute.

        Keyed on the caller's tensor object and its ``_version`` (and device, dtype, rows), so an
        in-place change of X is never answered from the cache. With `build` False only a hit is returned.
        """
        if self.product_route not in PRODUCT_ROUTES:
            raise SettingsError(f"product_route must be one of {', '.join(PRODUCT_ROUTES)}; got {self.product_route!r}.")
        if not torch.is_tensor(X) or X.dim() == 0 or self.product_route == "recompute":
            return None
        if X.requires_grad and torch.is_grad_enabled():
            return None  # a caller differentiating with respect to X needs the network's graph, not kept features
        rows = self.shard.rows(X.shape[0])
        tag = (self.device, self.dtype, rows.start, rows.stop)
        hit = self._products.get(X, tag)
        if hit is not None or not build or rows.stop <= rows.start:
            return hit
        Xp = self.prepare(X)
        budget = int(self.operator_cache_bytes)
        sk = self.structured
        if self.product_route == "auto" and sk.check(Xp):
            estimate = sk.feature_bytes(rows.stop - rows.start)
            if estimate > budget:
                self.operator_note = f"products recompute the network: structured features would need ~{estimate / 2**20:,.0f} MiB > budget {budget / 2**20:,.0f} MiB"
                return None
            cache, kind = StructuredProducts(self, sk.features(Xp, rows)), "structured features (Linear/Conv2d)"
        else:
            why = sk.reason if self.product_route == "auto" else f"product_route={self.product_route!r}"
            # Forward mode traces a tangent program per chunk shape (0.3–0.8 s each), which pays only over
            # many products (long CG solves): opt-in; "auto" and "primal" take J·v as a double backward.
            forward_mode = self.product_route == "forward_mode"
            cache = PrimalCache(self, self._inputs(Xp), rows, budget, self._tangent_programs, forward_mode)
            kind = f"kept autograd graphs ({why}), J·v by {cache.how}"
            if cache.refusal:
                self.operator_note = f"products recompute the network: {cache.refusal}"
                return None
        if not self._products.put(X, cache, cache.nbytes, budget, tag):
            self.operator_note = f"products recompute the network: {kind} need {cache.nbytes / 2**20:,.0f} MiB > budget {budget / 2**20:,.0f} MiB"
            return None
        self.operator_note = f"products from {kind}, {cache.nbytes / 2**20:,.1f} MiB kept"
        return cache

    # ------------------------------------------------------------------ basics
    def to(self, device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> LinearizedModel:
        """Return self with θ* and the frozen tensors moved to `device` (the user's module is untouched).

        The dtype is fixed at construction (caches and plans depend on it); `dtype` is accepted so
        linear_operator's ``.to(dtype=…, device=…)`` reaches us, and must equal it.
        """
        if dtype is not None and dtype != self.dtype:
            raise SettingsError(
                f"This LinearizedModel computes in {self.dtype}; build a new one with dtype={dtype} instead of converting."
            )
        if device is None:
            return self
        self.device = torch.device(device)
        self.theta = {n: t.to(self.device) for n, t in self.theta.items()}
        self.frozen = {n: t.to(self.device) for n, t in self.frozen.items()}
        return self

    @property
    def num_params(self) -> int:
        """Return P, the number of linearized parameters."""
        return self.subset.numel

    @property
    def output_dim(self) -> int:
        """Return K, the number of outputs per sample (known after the first forward)."""
        if self._output_dim is None:
            raise ShapeError("The output size is known after the model has seen data; call forward first.")
        return self._output_dim

    def prepare(self, X: torch.Tensor) -> torch.Tensor:
        """Return X on the engine's device and dtype (floating inputs only)."""
        if not torch.is_tensor(X):
            X = torch.as_tensor(X)
        if X.dim() == 0:
            raise ShapeError("Inputs must have a leading sample dimension, e.g. shape (n, d).")
        return X.to(device=self.device, dtype=self.dtype if X.is_floating_point() else X.dtype)

    def _f(self, theta: dict[str, torch.Tensor], X: torch.Tensor) -> torch.Tensor:
        """Return f(X; θ) of shape (n, K) for prepared inputs X (the whole network)."""
        return self._g(theta, self._inputs(X, store=False))

    def _g(self, theta: dict[str, torch.Tensor], Z: torch.Tensor) -> torch.Tensor:
        """Return f of shape (n, K) from Z = :meth:`_inputs` (X, or the frozen prefix's features)."""
        module = self.model if self.prefix is None else self.prefix.suffix
        return self._call(module, theta, Z).reshape(Z.shape[0], -1)

    def _call(self, module: nn.Module, theta: dict[str, torch.Tensor], X: torch.Tensor) -> torch.Tensor:
        values = {**self.frozen, **theta}
        for alias, name in self._aliases.items():
            values[alias] = values[name]
        if module is not self.model:  # a prefix or suffix holds only some of the names
            own = self.prefix.names(module)
            values = {k: t for k, t in values.items() if k in own}
        training = [m for m in self.model.modules() if m.training]
        for m in training:
            m.training = False
        try:
            out = functional_call(module, values, (X,), tie_weights=False)
        finally:
            for m in training:
                m.training = True
            for store, key, t in self._slots:
                store[key] = t
        if not torch.is_tensor(out):
            raise ShapeError(f"The model must return one tensor; it returned {type(out).__name__}.")
        return out

    def check_cancel(self) -> None:
        """Raise Cancelled if the current work's cancel token is set (no-op when nothing reports)."""
        if self.reporter is not None:
            self.reporter.check()

    def chunks(self, n: int, chunk_size: int | None = None) -> Iterator[slice]:
        """Yield slices over n samples; each step checks the cancel token."""
        step = max(1, int(chunk_size or self.chunk_size))
        rep = self.reporter
        for start in range(0, n, step):
            if rep is not None:
                rep.check()
                if rep.chunk_stage:
                    rep.emit(rep.chunk_stage, start / n)
            yield slice(start, min(start + step, n))

    def local_chunks(self, n: int, chunk_size: int | None = None) -> Iterator[slice]:
        """Yield slices over this rank's rows of n samples (all of them in one process)."""
        own = self.shard.rows(n)
        for s in self.chunks(own.stop - own.start, chunk_size):
            yield slice(own.start + s.start, own.start + s.stop)

    def forward(self, X: torch.Tensor) -> torch.Tensor:
        """Return f(X; θ*) with shape (n, K)."""
        X = self.prepare(X)
        n = X.shape[0]
        Z = self._inputs(X)
        with torch.no_grad():
            outs = [self._g(self.theta, Z[s]) for s in self.local_chunks(n)]
        if not outs:
            K = self._ensure_output_dim(X) if n else 0
            outs = [torch.empty(0, K, dtype=self.dtype, device=self.device)]
        out = self.shard.gather_rows(torch.cat(outs), n)
        self._output_dim = out.shape[1]
        return out

    def _ensure_output_dim(self, X: torch.Tensor) -> int:
        if self._output_dim is None:
            with torch.no_grad():
                self._output_dim = self._f(self.theta, X[:1]).shape[1]
        return self._output_dim

    # ------------------------------------------------------------ J and Jᵀ
    def jvp(self, X: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """Return J(X) v: (n, K) for v of shape (P,), or (c, n, K) for v of shape (c, P)."""
        cache = self._product_cache(X, build=False)
        X = self.prepare(X)
        batched = v.dim() == 2
        if cache is not None:
            vv = v.to(self.device, self.dtype)
            out = self.shard.gather_rows(cache.jvp(vv if batched else vv.unsqueeze(0)), X.shape[0], dim=1)
            return out if batched else out[0]
        tangents = self.subset.unflatten(v.to(self.device, self.dtype))
        outs = []
        Z = self._inputs(X)
        for s in self.local_chunks(X.shape[0]):
            Xc = Z[s]

            def push(t: dict[str, torch.Tensor], Xc: torch.Tensor = Xc) -> torch.Tensor:
                return jvp(lambda th: self._g(th, Xc), (self.theta,), (t,))[1]

            outs.append(vmap(push)(tangents) if batched else push(tangents))
        dim = 1 if batched else 0
        if not outs:
            K = self._ensure_output_dim(X)
            outs = [torch.empty(*((v.shape[0],) if batched else ()), 0, K, dtype=self.dtype, device=self.device)]
        return self.shard.gather_rows(torch.cat(outs, dim=dim), X.shape[0], dim=dim)

    def vjp(self, X: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
        """Return J(X)ᵀ u: (P,) for u of shape (n, K), or (c, P) for u of shape (c, n, K)."""
        cache = self._product_cache(X, build=False)
        X = self.prepare(X)
        K = self._ensure_output_dim(X)
        batched = u.dim() == 3
        u = u.to(self.device, self.dtype)
        if u.shape[-2:] != (X.shape[0], K):
            raise ShapeError(f"u must end in shape ({X.shape[0]}, {K}); got {tuple(u.shape)}.")
        if cache is not None:
            rows = self.shard.rows(X.shape[0])
            total = cache.vjp((u if batched else u.unsqueeze(0))[:, rows])
            total = self.shard.all_reduce(total)
            return total if batched else total[0]
        total = torch.zeros(*u.shape[:-2], self.num_params, dtype=self.dtype, device=self.device)
        Z = self._inputs(X)
        for s in self.local_chunks(X.shape[0]):
            _, pull = vjp(lambda th, Xc=Z[s]: self._g(th, Xc), self.theta)
            if batched:
                grads = vmap(pull)(u[:, s])[0]
                total += self.subset.flatten(grads, batch_dims=1)
            else:
                total += self.subset.flatten(pull(u[s])[0])
        return self.shard.all_reduce(total)

    # ------------------------------------------------------------ dense J
    def jacobian_chunk_size(self, K: int) -> int:
        """Return how many samples' Jacobians fit in one chunk of JACOBIAN_CHUNK_BYTES."""
        per_sample = K * self.num_params * torch.finfo(self.dtype).bits // 8
        return max(1, min(self.chunk_size, JACOBIAN_CHUNK_BYTES // max(per_sample, 1)))

    def iter_jacobian(self, X: torch.Tensor, local: bool = False) -> Iterator[tuple[slice, torch.Tensor]]:
        """Yield (slice, J) with J of shape (chunk, K, P), one per-sample ``vmap(jacrev)`` per chunk.

        With `local`, only this rank's rows are visited (the caller combines ranks).
        """
        X = self.prepare(X)
        K = self._ensure_output_dim(X)

        def single(th: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
            return self._g(th, x.unsqueeze(0)).squeeze(0)

        per_sample = vmap(jacrev(single), in_dims=(None, 0))
        loop = self.local_chunks if local else self.chunks
        Z = self._inputs(X)
        for s in loop(X.shape[0], self.jacobian_chunk_size(K)):
            yield s, self.subset.flatten(per_sample(self.theta, Z[s]), batch_dims=2)

    def jacobian(self, X: torch.Tensor) -> torch.Tensor:
        """Return the dense Jacobian of shape (n, K, P)."""
        X = self.prepare(X)
        K = self._ensure_output_dim(X)
        own = self.shard.rows(X.shape[0])
        # Filled in place: concatenating the chunks would hold J twice at the peak.
        out = torch.empty(own.stop - own.start, K, self.num_params, dtype=self.dtype, device=self.device)
        for s, J in self.iter_jacobian(X, local=True):
            out[s.start - own.start : s.stop - own.start] = J
        return self.shard.gather_rows(out, X.shape[0])

    # ------------------------------------------------------------ kernel
    def ntk_diag(self, X: torch.Tensor, block: bool = False) -> torch.Tensor:
        """Return ‖J_k(x_i)‖² as (n, K), or the per-sample output blocks J(x_i)J(x_i)ᵀ as (n, K, K)."""
        X = self.prepare(X)
        K = self._ensure_output_dim(X)
        parts = [torch.empty(0, *((K, K) if block else (K,)), dtype=self.dtype, device=self.device)]
        for _, J in self.iter_jacobian(X, local=True):
            parts.append(J @ J.transpose(1, 2) if block else (J * J).sum(-1))
        return self.shard.gather_rows(torch.cat(parts), X.shape[0])

    def kernel_matmul(
        self, X1: torch.Tensor, X2: torch.Tensor, V: torch.Tensor, independent: bool = False
    ) -> torch.Tensor:
        """Return K(X1, X2) V with K = J(X1) J(X2)ᵀ of size (n1·K, n2·K); V is (n2·K,) or (n2·K, c).

        Rows and columns are sample-major (index i·K + k). With `independent`, cross-output blocks
        are dropped: K[(i,a),(j,b)] = δ_ab J_a(x_i)·J_a(x_j).
        """
        X1 = X1 if torch.is_tensor(X1) else self.prepare(X1)
        X2 = X2 if torch.is_tensor(X2) else self.prepare(X2)
        # Products come in series (CG iterations, preconditioner rows): keep each side's features.
        self._product_cache(X2, build=True)
        if X1 is not X2:
            self._product_cache(X1, build=True)
        K = self._ensure_output_dim(self.prepare(X2))
        vector = V.dim() == 1
        V = V.to(self.device, self.dtype).reshape(X2.shape[0], K, -1).permute(2, 0, 1)  # (c, n2, K)
        c = V.shape[0]
        if independent:
            # Column (c, a) keeps output a only; both sides are masked so cross terms vanish.
            eye = torch.eye(K, dtype=self.dtype, device=self.device)
            V = (V.unsqueeze(1) * eye.view(1, K, 1, K)).reshape(c * K, X2.shape[0], K)
        T = self.vjp(X2, V)  # (c[·K], P)
        out = self.jvp(X1, T)  # (c[·K], n1, K)
        if independent:
            out = out.reshape(c, K, X1.shape[0], K).diagonal(dim1=1, dim2=3)  # (c, n1, K)
        out = out.permute(1, 2, 0).reshape(X1.shape[0] * K, c)
        return out[:, 0] if vector else out

    # ------------------------------------------------------------ GGN / Fisher
    def ggn_matvec(self, X: torch.Tensor, v: torch.Tensor, weights: torch.Tensor | None = None) -> torch.Tensor:
        """Return Jᵀ Λ J v, exact (jvp then vjp per chunk); v is (P,) or (c, P), Λ per-sample (n, K, K)."""
        cache = self._product_cache(X, build=True)
        X = self.prepare(X)
        batched = v.dim() == 2
        vv = v if batched else v.unsqueeze(0)
        if cache is not None:
            rows = self.shard.rows(X.shape[0])
            Jv = cache.jvp(vv.to(self.device, self.dtype))  # (c, n_local, K)
            if weights is not None:
                Jv = torch.einsum("nab,cnb->cna", weights[rows].to(self.device, self.dtype), Jv)
            total = self.shard.all_reduce(cache.vjp(Jv))
            return total if batched else total[0]
        tangents = self.subset.unflatten(vv.to(self.device, self.dtype))
        total = torch.zeros(vv.shape[0], self.num_params, dtype=self.dtype, device=self.device)
        Z = self._inputs(X)
        for s in self.local_chunks(X.shape[0]):
            Xc = Z[s]
            _, pull = vjp(lambda th: self._g(th, Xc), self.theta)
            Jv = vmap(lambda t: jvp(lambda th: self._g(th, Xc), (self.theta,), (t,))[1])(tangents)
            if weights is not None:
                Jv = torch.einsum("nab,cnb->cna", weights[s].to(self.device, self.dtype), Jv)
            total += self.subset.flatten(vmap(pull)(Jv)[0], batch_dims=1)
        total = self.shard.all_reduce(total)
        return total if batched else total[0]

    def ggn_matrix(
        self, X: torch.Tensor, weights: torch.Tensor | None = None, jacobian: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Return the dense GGN Σ_i J_iᵀ Λ_i J_i (P, P); Λ per-sample (n, K, K), identity when None.

        `jacobian` (n, K, P) reuses precomputed per-sample Jacobians instead of computing them.
        """
        X = self.prepare(X)
        P = self.num_params
        G = torch.zeros(P, P, dtype=self.dtype, device=self.device)
        if jacobian is not None:
            step = self.jacobian_chunk_size(jacobian.shape[1])
            blocks = ((s, jacobian[s]) for s in self.local_chunks(X.shape[0], step))
        else:
            blocks = self.iter_jacobian(X, local=True)
        for s, J in blocks:
            LJ = J if weights is None else torch.einsum("iab,ibp->iap", weights[s].to(self.device, self.dtype), J)
            G.addmm_(J.reshape(-1, P).T, LJ.reshape(-1, P))
        return self.shard.all_reduce(G)

    def fd_ggn_matvec(
        self, X: torch.Tensor, v: torch.Tensor, eps: float | None = None
    ) -> tuple[torch.Tensor, float]:
        """Return (Jᵀ J v by central finite differences, estimated relative error).

        The paper's "fast Fisher": J v ≈ (f(θ*+εv) − f(θ*−εv)) / 2ε from two perturbed forwards,
        then one vjp. The error estimate compares the steps ε and 2ε (Richardson): the central
        difference error is O(ε²), so their difference over 3 estimates the error of the ε result.
        """
        X = self.prepare(X)
        v = v.to(self.device, self.dtype)
        eps = eps or FD_DEFAULT_EPS.get(self.dtype, 1e-4)
        scale = eps / max(float(v.norm()), 1e-30) * math.sqrt(self.num_params)
        tangent = self.subset.unflatten(v)

        def shifted(h: float, Xc: torch.Tensor) -> torch.Tensor:
            theta = {n: p + h * tangent[n] for n, p in self.theta.items()}
            return self._g(theta, Xc)

        total = torch.zeros(self.num_params, dtype=self.dtype, device=self.device)
        err_num = 0.0
        err_den = 0.0
        Z = self._inputs(X)
        for s in self.local_chunks(X.shape[0]):
            Xc = Z[s]
            with torch.no_grad():
                d1 = (shifted(scale, Xc) - shifted(-scale, Xc)) / (2 * scale)
                d2 = (shifted(2 * scale, Xc) - shifted(-2 * scale, Xc)) / (4 * scale)
            err_num += float(((d1 - d2) ** 2).sum()) / 9.0
            err_den += float((d1**2).sum())
            _, pull = vjp(lambda th: self._g(th, Xc), self.theta)
            total += self.subset.flatten(pull(d1)[0])
        errs = torch.tensor([err_num, err_den], dtype=torch.float64, device=self.device)
        total, errs = self.shard.all_reduce(total), self.shard.all_reduce(errs)
        return total, math.sqrt(float(errs[0]) / max(float(errs[1]), 1e-300))
