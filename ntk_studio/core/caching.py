"""A one-entry cache keyed on tensor identity and version, for per-training-set work reused by every test chunk."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch


class LastInputCache:
    """Calls `fn(X)` and remembers the result for the last X object while X is unchanged.

    The key is the object *and* its version counter (``X._version``, bumped by every in-place
    write): comparing values would cost as much as recomputing, and identity alone returned a stale
    result after ``X.mul_(…)``. :meth:`clear` forgets the entry (benchmarks time uncached calls).
    """

    def __init__(self, fn: Callable[[torch.Tensor], Any]) -> None:
        self.fn = fn
        self._key: torch.Tensor | None = None
        self._version = -1
        self._value: Any = None

    def __call__(self, X: torch.Tensor) -> Any:
        if self._key is not X or self._version != X._version:
            self._value = self.fn(X)
            self._key, self._version = X, X._version
        return self._value

    def clear(self) -> None:
        """Forget the cached result."""
        self._key, self._value, self._version = None, None, -1
