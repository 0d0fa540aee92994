"""Maps from a Gaussian over logits, N(μ, Σ) per point, to class probabilities, by name.

- 'probit': per-class probit, softmax(μ_c / √(1 + π/8 Σ_cc)) (:func:`.classify.probit_proba`).
- 'pairwise': mean-field pairwise probit on logit differences (:func:`.classify.pairwise_probit_proba`).
- 'bridge': the Laplace bridge (Hobbhahn, Kristiadi & Hennig, 2022): a Dirichlet matched to the
  Gaussian after removing the shift common to all logits; its mean α/Σα.
- 'mc': Monte Carlo average of softmax over `samples` draws (:func:`.classify.sample_gaussian`).
- 'map': softmax(μ), the MAP logits without their uncertainty.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from .classify import PROBIT_APPROXIMATIONS, sample_gaussian

MC_SAMPLES = 10_000


def laplace_bridge_proba(mean: torch.Tensor, cov: torch.Tensor) -> torch.Tensor:
    """Return the Laplace bridge's Dirichlet mean (m, C).

    Softmax ignores a shift shared by all logits, so μ and Σ are first projected onto the zero-sum
    subspace (μ − mean μ, PΣP with P = I − 11ᵀ/C); then α_k = (1 − 2/C + e^{μ_k} Σ_l e^{−μ_l} / C²) / Σ_kk.
    """
    C = mean.shape[-1]
    P = torch.eye(C, dtype=mean.dtype, device=mean.device) - 1.0 / C
    mu = mean - mean.mean(-1, keepdim=True)
    var = (P @ cov @ P).diagonal(dim1=-2, dim2=-1).clamp_min(1e-12)
    mu = mu - mu.max(-1, keepdim=True).values.clamp_min(0)  # e^{μ_k}Σe^{−μ_l} is shift-free; avoid overflow
    alpha = (1.0 - 2.0 / C + torch.exp(mu) * torch.exp(-mu).sum(-1, keepdim=True) / C**2) / var
    return alpha / alpha.sum(-1, keepdim=True)


def mc_proba(mean: torch.Tensor, cov: torch.Tensor, samples: int = MC_SAMPLES, generator=None) -> torch.Tensor:
    """Return the Monte Carlo predictive E[softmax(f)], f ~ N(μ, Σ), with `samples` draws."""
    return torch.softmax(sample_gaussian(mean, cov, samples, generator), -1).mean(0)


def map_proba(mean: torch.Tensor, cov: torch.Tensor) -> torch.Tensor:  # noqa: ARG001 - same signature as the others
    """Return softmax(μ): the MAP logits only."""
    return torch.softmax(mean, -1)


PROBA_MAPS: dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = {
    **PROBIT_APPROXIMATIONS, "bridge": laplace_bridge_proba, "mc": mc_proba, "map": map_proba,
}
