"""Parameter subsets: which of a model's parameters are linearized, and their flat layout."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from .errors import ParameterSelectionError

ParamSpec = str | Sequence[str]


def parameter_layers(model: nn.Module) -> list[str]:
    """Return the names of modules that own parameters directly, in registration order."""
    names = []
    for name, module in model.named_modules():
        if any(True for _ in module.parameters(recurse=False)):
            names.append(name)
    return names


def _select_names(model: nn.Module, spec: ParamSpec) -> list[str]:
    all_names = [name for name, p in model.named_parameters()]
    if isinstance(spec, str):
        spec = spec.strip()
        if spec == "all":
            return all_names
        if spec.startswith("last:"):
            try:
                k = int(spec.split(":", 1)[1])
            except ValueError:
                raise ParameterSelectionError(
                    f"Cannot read {spec!r}: write 'last:K' with K a positive integer, e.g. 'last:2'."
                ) from None
            layers = parameter_layers(model)
            if not 1 <= k <= len(layers):
                raise ParameterSelectionError(
                    f"'last:{k}' asks for {k} layers but the model has {len(layers)} layers with "
                    f"parameters ({', '.join(layers) or 'none'})."
                )
            return _names_under(all_names, layers[-k:])
        spec = [part.strip() for part in spec.split(",") if part.strip()]
    return _names_under(all_names, list(spec), strict=True)


def _names_under(all_names: list[str], prefixes: list[str], strict: bool = False) -> list[str]:
    chosen = []
    for prefix in prefixes:
        hits = [n for n in all_names if n == prefix or n.startswith(prefix + ".") or prefix == ""]
        if strict and not hits:
            raise ParameterSelectionError(
                f"No parameter is named {prefix!r} or lies under a module of that name. "
                f"Parameters: {', '.join(all_names[:12])}{' …' if len(all_names) > 12 else ''}"
            )
        chosen.extend(n for n in hits if n not in chosen)
    # Keep the model's own order so flat vectors are reproducible whatever order the user wrote.
    return [n for n in all_names if n in set(chosen)]


@dataclass(frozen=True)
class ParamSubset:
    """The linearized parameters: names, shapes and their place in one flat vector."""

    names: tuple[str, ...]
    shapes: tuple[torch.Size, ...]

    @classmethod
    def from_spec(cls, model: nn.Module, spec: ParamSpec = "all") -> ParamSubset:
        """Return the subset chosen by `spec`: 'all', 'last:K', module names, or 'a,b'."""
        names = _select_names(model, spec)
        if not names:
            raise ParameterSelectionError("The parameter selection is empty: choose at least one parameter.")
        params = dict(model.named_parameters())
        return cls(tuple(names), tuple(params[n].shape for n in names))

    @property
    def sizes(self) -> tuple[int, ...]:
        """Return the number of scalars of each parameter."""
        return tuple(int(torch.Size(s).numel()) for s in self.shapes)

    @property
    def numel(self) -> int:
        """Return P, the length of the flat parameter vector."""
        return sum(self.sizes)

    def flatten(self, tensors: dict[str, torch.Tensor], batch_dims: int = 0) -> torch.Tensor:
        """Return the dict's tensors concatenated to (*batch, P) in the subset's order."""
        parts = []
        for name in self.names:
            t = tensors[name]
            parts.append(t.reshape(*t.shape[:batch_dims], -1))
        return torch.cat(parts, dim=-1)

    def unflatten(self, flat: torch.Tensor) -> dict[str, torch.Tensor]:
        """Return a dict of views of `flat` (*batch, P) shaped like the parameters."""
        batch = flat.shape[:-1]
        pieces = torch.split(flat, self.sizes, dim=-1)
        return {n: p.reshape((*batch, *s)) for n, p, s in zip(self.names, pieces, self.shapes)}

    def modules(self) -> list[str]:
        """Return the names of the modules owning the chosen parameters."""
        owners: list[str] = []
        for name in self.names:
            owner = name.rpartition(".")[0]
            if owner not in owners:
                owners.append(owner)
        return owners


def iter_named(model: nn.Module, names: Iterable[str]) -> dict[str, torch.Tensor]:
    """Return the model's parameters and buffers whose names are in `names`."""
    wanted = set(names)
    out = {n: p for n, p in model.named_parameters() if n in wanted}
    out.update({n: b for n, b in model.named_buffers() if n in wanted})
    return out
