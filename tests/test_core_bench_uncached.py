"""bench/operators.py never times a cached kernel build: every timed repeat recomputes the per-input work (issue #14)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))

import operators  # noqa: E402
from ntk_studio.core.linearized import LinearizedModel  # noqa: E402
from ntk_studio.core.structured import StructuredKernel  # noqa: E402


@pytest.mark.parametrize("route, cls, method", [("dense_j", LinearizedModel, "jacobian"),
                                                ("structured", StructuredKernel, "features")])
def test_every_timed_repeat_of_a_dense_kernel_build_recomputes_it(monkeypatch, route, cls, method):
    calls = []
    original = getattr(cls, method)

    def counted(self, *args, **kwargs):
        calls.append(args[0].shape[0])
        return original(self, *args, **kwargs)

    monkeypatch.setattr(cls, method, counted)
    monkeypatch.setattr(operators, "REPEAT_BELOW_S", 1e9)  # force the repeat branch
    monkeypatch.setattr(operators, "FAST_REPEATS", 3)
    res = operators.child_dense(route, 40)
    assert res["path"] == ("jacobian" if route == "dense_j" else "structured")
    full = [n for n in calls if n == 40]
    assert len(full) == 1 + 3  # the first timed call and each repeat built the kernel from scratch
