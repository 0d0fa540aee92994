"""core.device: device specs, device facts, memory budget and the precision policy.

CUDA paths are checked with torch.cuda mocked (monkeypatch); with `pytest --device cuda` the last
tests also read the real GPU.
"""

from types import SimpleNamespace

import pytest
import torch

from ntk_studio.core import device as devmod
from ntk_studio.core.device import (
    DeviceInfo,
    choose_precision,
    device_info,
    float64_class,
    measure_float64_ratio,
    memory_budget,
    resolve_device,
)
from ntk_studio.core.errors import DeviceError, NTKStudioError, SettingsError

GIB = 1024**3


def fake_cuda(monkeypatch, names=("NVIDIA H200",), cc=((9, 0),), free=(100 * GIB,), total=(139 * GIB,), current=0):
    """Make torch.cuda report the given devices (no real CUDA call is made)."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: len(names))
    monkeypatch.setattr(torch.cuda, "current_device", lambda: current)

    def props(i):
        return SimpleNamespace(name=names[i], major=cc[i][0], minor=cc[i][1], total_memory=total[i])

    def mem(i=None):
        i = current if i is None else (i.index if isinstance(i, torch.device) else i)
        return free[i], total[i]

    monkeypatch.setattr(torch.cuda, "get_device_properties", props)
    monkeypatch.setattr(torch.cuda, "mem_get_info", mem)


def no_cuda(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)


# ----------------------------------------------------------------------------- resolve_device
@pytest.mark.parametrize("spec", ["cpu", "CPU", " cpu ", torch.device("cpu")])
def test_cpu_specs(spec):
    assert resolve_device(spec) == torch.device("cpu")


def test_auto_is_cpu_without_cuda(monkeypatch):
    no_cuda(monkeypatch)
    assert resolve_device("auto") == torch.device("cpu")
    assert resolve_device(None) == torch.device("cpu")


def test_auto_picks_the_current_cuda_device(monkeypatch):
    fake_cuda(monkeypatch, names=("A", "B"), cc=((9, 0), (8, 6)), free=(1, 2), total=(3, 4), current=1)
    assert resolve_device("auto") == torch.device("cuda", 1)
    assert resolve_device("cuda") == torch.device("cuda", 1)
    assert resolve_device("cuda:0") == torch.device("cuda", 0)
    assert resolve_device(torch.device("cuda", 0)) == torch.device("cuda", 0)


def test_cuda_without_cuda_is_a_typed_error_naming_the_way_out(monkeypatch):
    no_cuda(monkeypatch)
    for spec in ("cuda", "cuda:0"):
        with pytest.raises(DeviceError, match="'cpu' or 'auto'") as exc:
            resolve_device(spec)
        assert isinstance(exc.value, SettingsError) and isinstance(exc.value, NTKStudioError) and isinstance(exc.value, ValueError)


def test_cuda_index_past_the_count(monkeypatch):
    fake_cuda(monkeypatch, names=("A", "B"), cc=((9, 0), (9, 0)), free=(1, 1), total=(2, 2))
    with pytest.raises(DeviceError, match=r"2 CUDA devices visible \(cuda:0 … cuda:1\)"):
        resolve_device("cuda:2")


@pytest.mark.parametrize("spec", ["gpu", "mps", "cuda:-1", "cuda:x", "cuda0", "", 3])
def test_unknown_specs(spec):
    with pytest.raises(DeviceError, match="auto, cpu, cuda, cuda:N"):
        resolve_device(spec)


# ----------------------------------------------------------------------------- device_info, budget
def test_cpu_info_reads_this_machine():
    info = device_info("cpu")
    assert info.device == "cpu" and not info.is_cuda
    assert info.name and info.compute_capability is None and info.float64_class == "cpu"
    assert 0 < info.free_bytes <= info.total_bytes
    assert "GiB free" in info.describe()
    assert info.to_dict()["device"] == "cpu"


def test_cuda_info_from_the_driver(monkeypatch):
    fake_cuda(monkeypatch, names=("NVIDIA H200", "NVIDIA GeForce RTX 4090"), cc=((9, 0), (8, 9)),
              free=(130 * GIB, 20 * GIB), total=(139 * GIB, 24 * GIB))
    h200, rtx = device_info("cuda:0"), device_info("cuda:1")
    assert h200 == DeviceInfo("cuda:0", "NVIDIA H200", 139 * GIB, 130 * GIB, (9, 0), "full")
    assert rtx.float64_class == "reduced" and rtx.free_bytes == 20 * GIB
    assert h200.describe() == "cuda:0 · NVIDIA H200 · 130.0 of 139.0 GiB free · float64 full rate"
    assert h200.to_dict()["compute_capability"] == [9, 0]


@pytest.mark.parametrize("cc, expected", [((9, 0), "full"), ((8, 0), "full"), ((7, 0), "full"), ((10, 0), "full"),
                                          ((8, 6), "reduced"), ((8, 9), "reduced"), ((7, 5), "reduced"),
                                          ((12, 0), "reduced"), (None, "cpu")])
def test_float64_class_table(cc, expected):
    assert float64_class(cc) == expected


def test_memory_budget_is_a_share_of_free_memory(monkeypatch):
    fake_cuda(monkeypatch, free=(100 * GIB,), total=(139 * GIB,))
    assert memory_budget("cuda", 0.5) == 50 * GIB
    assert memory_budget("cuda") == int(100 * GIB * 0.8)
    cpu = memory_budget("cpu", 1.0)
    assert 0 < cpu <= device_info("cpu").total_bytes
    for bad in (0.0, -0.1, 1.5):
        with pytest.raises(DeviceError, match=r"\(0, 1\]"):
            memory_budget("cpu", bad)


# ----------------------------------------------------------------------------- precision policy
def test_cpu_is_float64_throughout():
    p = choose_precision("cpu")
    assert (p.products, p.solves, p.mixed) == (torch.float64, torch.float64, False)


@pytest.mark.parametrize("name, cc, ratio, products", [
    ("NVIDIA H200", (9, 0), 2.0, torch.float64),  # datacenter: measured fast
    ("NVIDIA A100-SXM4-80GB", (8, 0), 2.1, torch.float64),
    ("NVIDIA GeForce RTX 4090", (8, 9), 64.0, torch.float32),  # consumer: measured slow
    ("NVIDIA L4", (8, 9), 40.0, torch.float32),
    ("NVIDIA H200", (9, 0), 30.0, torch.float32),  # the timing wins over the table (e.g. a throttled part)
    ("Future GPU", (13, 0), 1.9, torch.float64),  # unknown capability, measured fast
])
def test_cuda_policy_follows_the_measured_ratio(monkeypatch, name, cc, ratio, products):
    fake_cuda(monkeypatch, names=(name,), cc=(cc,))
    p = choose_precision("cuda", ratio=ratio)
    assert p.products == products and p.solves == torch.float64 and p.ratio == ratio
    assert name in p.reason and f"{ratio:.1f}×" in p.reason
    disagrees = (ratio <= devmod.FAST_FLOAT64_RATIO) != (float64_class(cc) == "full")
    assert ("the timing wins" in p.reason) == disagrees


@pytest.mark.parametrize("cc, products", [((9, 0), torch.float64), ((8, 6), torch.float32)])
def test_cuda_policy_without_measurement_uses_the_table(monkeypatch, cc, products):
    fake_cuda(monkeypatch, cc=(cc,))
    p = choose_precision("cuda", measure=False)
    assert p.products == products and p.ratio is None and "not measured" in p.reason


def test_cuda_policy_measures_by_default(monkeypatch):
    fake_cuda(monkeypatch, names=("NVIDIA GeForce RTX 3080",), cc=((8, 6),))
    calls = []
    monkeypatch.setattr(devmod, "measure_float64_ratio", lambda dev: calls.append(dev) or 32.0)
    p = choose_precision("auto")
    assert calls == [torch.device("cuda", 0)] and p.mixed and p.ratio == 32.0
    assert p.to_dict() == {"products": "float32", "solves": "float64", "mixed": True, "reason": p.reason, "ratio": 32.0}


def test_measured_ratio_on_the_test_device_is_plausible(device):
    """float64 costs 1–4× float32 on a CPU or a datacenter GPU, up to ~64× on consumer GPUs."""
    ratio = measure_float64_ratio(device, size=256 if device.type == "cpu" else 4096)
    assert 0.3 < ratio < 128


def test_real_device_facts(device):
    info = device_info(device)
    assert info.device == (str(device) if device.type == "cuda" else "cpu")
    assert 0 < info.free_bytes <= info.total_bytes
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        assert info.compute_capability is not None
        p = choose_precision(device)
        # The policy and the table must agree on a real part; a disagreement is a finding to look at.
        assert (p.products == torch.float64) == (info.float64_class == "full"), p.reason


def test_importing_the_module_does_not_touch_cuda():
    import subprocess
    import sys

    code = ("import torch, ntk_studio.core.device as d; "
            "print(torch.cuda.is_initialized())")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
