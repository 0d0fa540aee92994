"""Settings each built-in example opens with (chosen so one click on Adapt gives a meaningful run)."""

from __future__ import annotations

from typing import Any

_TABULAR = {"params": "all", "data": {"n_adapt": 40, "seed": 0},
            "method": {"prior_var": 1.0, "noise": 0.1, "fit_hyper": True, "epochs": 300, "lr": 3e-3, "batch_size": 32}}
EXAMPLE_DEFAULTS: dict[str, dict[str, Any]] = {
    "sine": {"params": "all", "data": {"n_adapt": 10, "seed": 0},
             "method": {"prior_var": 1.0, "noise": 0.01, "fit_hyper": False, "epochs": 300, "lr": 1e-2,
                        "batch_size": 32}},
    "hprice3": _TABULAR,
    "diabetes": _TABULAR,
    # Only the new head: the 2.2M-parameter body stays at its ImageNet weights (see docs/benchmarks.md).
    "faces": {"params": "head", "data": {"n_adapt": 40, "seed": 0},
              "method": {"prior_var": 0.01, "noise": 0.01, "fit_hyper": False, "epochs": 40, "lr": 3e-3,
                         "batch_size": 16}},
}
