"""The one set of run settings every front end starts from (CLI, worker jobs, app, library).

Importable without torch: the GUI process reads it at start-up. ``core.pipeline`` runs them.

How a run is defined, once for everyone:

- **Split**: ``core.data.adaptation_split(n, n_adapt, seed)`` — the first ``n_adapt`` rows of a
  seeded permutation adapt, the rest score; without ``n_adapt``, 70 % adapt and 30 % score.
- **Hyperparameters** are fitted by default: s² and σ² by the marginal likelihood (regression),
  s² by the Laplace evidence (classification). The starting σ² is never in the target's raw units:
  it is ``NOISE_FRACTION`` × the variance of the adaptation targets unless given.
- **Fine-tuning** trains exactly the linearized subset (``params``), Adam, no early stopping.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

TASK_CHOICES = ("auto", "regression", "classification")
NOISE_FRACTION = 0.1  # starting σ² = this × var(adaptation targets) when no noise is given
SCORING_RULE = (
    "Point predictors (the unadapted and the fine-tuned model) have no uncertainty of their own; "
    "for regression each is scored as a Gaussian whose variance is its own mean squared residual on "
    "the adaptation rows (never the test rows, never another model's noise). Classifiers are scored "
    "on their class probabilities."
)


@dataclass(frozen=True)
class RunSettings:
    """What a run does: task, split, linearized subset, hyperparameters and the fine-tuning baseline.

    ``noise`` None starts σ² at NOISE_FRACTION × var(y_adapt); ``prior_var`` is s² in parameter
    units. With ``fit_hyper`` both are starting points of the evidence maximization.
    """

    task: str = "auto"
    params: str = "all"
    n_adapt: int | None = None
    seed: int = 0
    prior_var: float = 1.0
    noise: float | None = None
    fit_hyper: bool = True
    space: str = "auto"
    solver: str = "auto"
    epochs: int = 300
    lr: float = 1e-3
    batch_size: int = 32
    ensemble: int = 0

    def replace(self, **changes) -> RunSettings:
        """Return a copy with the given fields changed (None values are ignored)."""
        return dataclasses.replace(self, **{k: v for k, v in changes.items() if v is not None})

    def to_dict(self) -> dict:
        """Return the settings as a plain dict."""
        return dataclasses.asdict(self)


# Per-example values: chosen so one run gives a meaningful picture (few labelled rows, the subset
# that fits the memory budget). Every front end reads these; nothing repeats them.
_TABULAR = RunSettings(n_adapt=40, lr=3e-3)
EXAMPLE_SETTINGS: dict[str, RunSettings] = {
    "sine": RunSettings(n_adapt=10, lr=1e-2),
    "diabetes": _TABULAR,
    "hprice3": _TABULAR,
    # Only the new head: linearizing the 2.2M-parameter MobileNetV2 body would run for minutes
    # and need GBs (see docs/benchmarks.md); the head's plan fits the budget in seconds.
    "faces": RunSettings(params="head", n_adapt=40, prior_var=0.01, epochs=40, lr=3e-3, batch_size=16),
    # The CNN's two linear layers (18,561 of 32,609 parameters) on frozen conv features computed once: as accurate
    # as linearizing every parameter, >10x faster, and its σ grows more outside the labelled angles (docs/rotation.md).
    "rotation": RunSettings(params="fc,head", n_adapt=40, epochs=100, lr=1e-3),
}
DEFAULT_SETTINGS = RunSettings()


def settings_for(example: str | None) -> RunSettings:
    """Return the default RunSettings of a built-in example (or of a user's own model and data)."""
    return EXAMPLE_SETTINGS.get(example or "", DEFAULT_SETTINGS)
