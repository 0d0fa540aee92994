"""Settings each built-in example opens with: read from the one shared set in ntk_studio.pipeline_defaults.

``method.noise`` is None when σ² starts from NOISE_FRACTION × the variance of the adaptation targets
(the worker resolves it; it is never a number in the target's raw units).
"""

from __future__ import annotations

from typing import Any

from ntk_studio.pipeline_defaults import EXAMPLE_SETTINGS, NOISE_FRACTION, RunSettings


def _app_form(s: RunSettings) -> dict[str, Any]:
    return {"params": s.params, "data": {"n_adapt": s.n_adapt, "seed": s.seed},
            "method": {"prior_var": s.prior_var, "noise": s.noise, "noise_fraction": NOISE_FRACTION,
                       "fit_hyper": s.fit_hyper, "epochs": s.epochs, "lr": s.lr, "batch_size": s.batch_size}}


EXAMPLE_DEFAULTS: dict[str, dict[str, Any]] = {name: _app_form(s) for name, s in EXAMPLE_SETTINGS.items()}
