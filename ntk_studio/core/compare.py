"""Deprecated: the comparison is one call of :func:`ntk_studio.core.pipeline.run` with
``methods=("linearized", "fine-tuned", "ensemble")``; this module only keeps old imports working."""

from __future__ import annotations

from .hyper import PRIOR_VAR_GRID

__all__ = ["PRIOR_VAR_GRID"]
