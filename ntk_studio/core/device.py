"""Where the engine runs and in which precision: device specs, device facts, memory budget, precision policy.

- :func:`resolve_device` turns ``'auto' | 'cpu' | 'cuda' | 'cuda:i'`` (or a ``torch.device``) into a
  ``torch.device``; ``auto`` picks the current CUDA device when there is one. A device that does not
  exist is a :class:`~ntk_studio.core.errors.DeviceError` saying what to pass instead.
- :func:`device_info` returns a :class:`DeviceInfo`: name, total and free memory (CUDA:
  ``torch.cuda.mem_get_info``; CPU: ``MemTotal``/``MemAvailable``), compute capability and the
  float64 throughput class, with a one-line :meth:`DeviceInfo.describe` for the app and the CLI.
- :func:`memory_budget` is a share of the device's free memory: what the planner may use.
- :func:`choose_precision` is the precision policy. float64 everywhere on CPUs and on GPUs with
  full-rate float64 (P100, V100, A100, H100/H200, B100/B200); on the others (consumer and most
  inference GPUs, float64 at 1/32–1/64 of float32) Jacobian products in float32 and the solves in
  float64. The class comes from the compute capability, and a short float64/float32 matmul timing
  on the device decides when it is available (it overrides the table: the table cannot know every
  part, the timing can).

No Qt, no printing, no global state; importing this module does not initialize CUDA.
"""

from __future__ import annotations

import os
import platform
import re
import time
from dataclasses import asdict, dataclass

import torch

from .errors import DeviceError

DEVICE_CHOICES = ("auto", "cpu", "cuda", "cuda:N")
_CUDA_SPEC = re.compile(r"^cuda(?::(\d+))?$")

# Compute capabilities whose float64 runs at half the float32 rate (datacenter parts):
# P100 (6.0), V100 (7.0), A100/A30 (8.0), H100/H200/GH200 (9.0), B100/B200/GB200 (10.0).
# Every other capability (6.1, 7.5, 8.6, 8.7, 8.9, 12.x: GeForce, RTX, T4, A10, L4, L40, Jetson)
# runs float64 at 1/32 to 1/64 of float32.
FULL_RATE_FLOAT64_CC = frozenset({(6, 0), (7, 0), (8, 0), (9, 0), (10, 0)})
# A measured float64/float32 matmul time ratio at or below this means float64 is fast enough to use
# throughout (full-rate parts measure ~2; reduced-rate ones 16–64).
FAST_FLOAT64_RATIO = 4.0
PROBE_SIZE = 4096  # the probe multiplies two PROBE_SIZE² matrices: 137 GFLOP, ~2 ms on an H200
PROBE_REPEATS = 3
DEFAULT_BUDGET_FRACTION = 0.8

FLOAT64_FULL, FLOAT64_REDUCED, FLOAT64_CPU = "full", "reduced", "cpu"


@dataclass(frozen=True)
class DeviceInfo:
    """Facts about one device. Memory in bytes; ``compute_capability`` is None on CPU."""

    device: str  # 'cpu' or 'cuda:i'
    name: str
    total_bytes: int
    free_bytes: int
    compute_capability: tuple[int, int] | None
    float64_class: str  # 'full', 'reduced' or 'cpu'

    @property
    def is_cuda(self) -> bool:
        return self.device.startswith("cuda")

    def describe(self) -> str:
        """Return one line for a status bar, e.g. ``'cuda:0 · NVIDIA H200 · 137.9 of 139.8 GiB free · float64 full rate'``."""
        gib = 1024**3
        mem = f"{self.free_bytes / gib:.1f} of {self.total_bytes / gib:.1f} GiB free"
        rate = {FLOAT64_FULL: "float64 full rate", FLOAT64_REDUCED: "float64 reduced rate",
                FLOAT64_CPU: "float64"}[self.float64_class]
        return f"{self.device} · {self.name} · {mem} · {rate}"

    def to_dict(self) -> dict:
        """Return the facts as a JSON-ready dict."""
        d = asdict(self)
        d["compute_capability"] = list(self.compute_capability) if self.compute_capability else None
        return d


@dataclass(frozen=True)
class Precision:
    """The precision policy for one device.

    ``products``: dtype of the network, its Jacobian products and kernel/GGN matrices; ``solves``:
    dtype of the system matrix, its factorization or CG, and the variances. ``ratio`` is the
    measured float64/float32 matmul time ratio (None when not measured).
    """

    products: torch.dtype
    solves: torch.dtype
    reason: str
    ratio: float | None = None

    @property
    def mixed(self) -> bool:
        return self.products != self.solves

    def to_dict(self) -> dict:
        return {"products": _dtype_name(self.products), "solves": _dtype_name(self.solves), "mixed": self.mixed,
                "reason": self.reason, "ratio": self.ratio}


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


# ----------------------------------------------------------------------------- resolving specs
def _no_cuda_reason() -> str:
    if torch.version.cuda is None:
        return f"this torch ({torch.__version__}) is built without CUDA"
    return "no CUDA device is visible (check the driver and CUDA_VISIBLE_DEVICES)"


def resolve_device(spec: str | torch.device | None = "auto") -> torch.device:
    """Return the torch.device for ``'auto' | 'cpu' | 'cuda' | 'cuda:i'`` (None means 'auto').

    'auto' is the current CUDA device when CUDA is available, else the CPU; 'cuda' is the current
    CUDA device. The result always carries an index for CUDA. Raises DeviceError for an unknown
    spec, for CUDA when it is unavailable and for an index past the device count.
    """
    if spec is None:
        spec = "auto"
    if isinstance(spec, torch.device):
        spec = str(spec)
    if not isinstance(spec, str):
        raise DeviceError(f"device must be one of {', '.join(DEVICE_CHOICES)}; got {spec!r}.")
    text = spec.strip().lower()
    if text == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", torch.cuda.current_device())
        return torch.device("cpu")
    if text == "cpu":
        return torch.device("cpu")
    match = _CUDA_SPEC.match(text)
    if match is None:
        raise DeviceError(f"device must be one of {', '.join(DEVICE_CHOICES)}; got {spec!r}.")
    if not torch.cuda.is_available():
        raise DeviceError(f"device {spec!r} was requested but {_no_cuda_reason()}; use 'cpu' or 'auto'.")
    count = torch.cuda.device_count()
    index = torch.cuda.current_device() if match.group(1) is None else int(match.group(1))
    if index >= count:
        raise DeviceError(
            f"device {spec!r} does not exist: {count} CUDA device{'s' if count != 1 else ''} visible "
            f"(cuda:0{f' … cuda:{count - 1}' if count > 1 else ''})."
        )
    return torch.device("cuda", index)


# ----------------------------------------------------------------------------- facts
def meminfo_bytes(field: str) -> int | None:
    """Return a /proc/meminfo field (e.g. 'MemAvailable') in bytes, None where there is no such file or field."""
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def cpu_name() -> str:
    """Return the CPU's model name (/proc/cpuinfo), else what the platform module knows."""
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "CPU"


def _cpu_memory() -> tuple[int, int]:
    total = meminfo_bytes("MemTotal")
    if total is None:
        try:
            total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
        except (ValueError, OSError, AttributeError):
            total = 0
    free = meminfo_bytes("MemAvailable")
    return int(total), int(free if free is not None else total)


def float64_class(compute_capability: tuple[int, int] | None) -> str:
    """Return 'full' for full-rate float64 GPUs, 'reduced' for the others and 'cpu' for None."""
    if compute_capability is None:
        return FLOAT64_CPU
    return FLOAT64_FULL if tuple(compute_capability) in FULL_RATE_FLOAT64_CC else FLOAT64_REDUCED


def device_info(device: str | torch.device | None = "auto") -> DeviceInfo:
    """Return the name, total/free memory, compute capability and float64 class of a device (or spec)."""
    dev = resolve_device(device)
    if dev.type == "cpu":
        total, free = _cpu_memory()
        return DeviceInfo("cpu", cpu_name(), total, free, None, FLOAT64_CPU)
    props = torch.cuda.get_device_properties(dev.index)
    free, total = torch.cuda.mem_get_info(dev.index)
    cc = (int(props.major), int(props.minor))
    return DeviceInfo(f"cuda:{dev.index}", props.name, int(total), int(free), cc, float64_class(cc))


def memory_budget(device: str | torch.device | None = "auto", fraction: float = DEFAULT_BUDGET_FRACTION) -> int:
    """Return ``fraction`` of the device's free memory in bytes: the planner's budget on that device."""
    if not 0.0 < fraction <= 1.0:
        raise DeviceError(f"The memory fraction must be in (0, 1]; got {fraction}.")
    return int(device_info(device).free_bytes * fraction)


# ----------------------------------------------------------------------------- precision policy
def _synchronize(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def measure_float64_ratio(device: str | torch.device | None = "auto", size: int = PROBE_SIZE,
                          repeats: int = PROBE_REPEATS) -> float:
    """Return time(float64 matmul) / time(float32 matmul) for two size×size matrices on the device.

    Each dtype is warmed up once, then the best of `repeats` timed calls is kept. float32 is timed
    without TF32 (the engine never relies on it), so the ratio is the true float64 cost.
    """
    dev = resolve_device(device)
    best = {}
    tf32 = dev.type == "cuda" and torch.backends.cuda.matmul.allow_tf32  # off by default; touched only if on
    try:
        if tf32:
            torch.backends.cuda.matmul.allow_tf32 = False
        for dtype in (torch.float32, torch.float64):
            a = torch.randn(size, size, device=dev, dtype=dtype)
            b = torch.randn(size, size, device=dev, dtype=dtype)
            a @ b  # warm-up (cuBLAS handle, kernels)
            _synchronize(dev)
            times = []
            for _ in range(repeats):
                start = time.perf_counter()
                a @ b
                _synchronize(dev)
                times.append(time.perf_counter() - start)
            best[dtype] = max(min(times), 1e-9)
            del a, b
    finally:
        if tf32:
            torch.backends.cuda.matmul.allow_tf32 = True
    return best[torch.float64] / best[torch.float32]


def choose_precision(device: str | torch.device | None = "auto", measure: bool = True,
                     ratio: float | None = None) -> Precision:
    """Return the precision policy for the device.

    CPU: float64 throughout (float64 costs about 2× float32 there, and float32 kernel-space
    variances can be off by tens of percent). CUDA: the compute capability gives the float64
    class; a measured float64/float32 matmul ratio (``measure=True``, or passed as ``ratio``)
    decides: ≤ FAST_FLOAT64_RATIO → float64 throughout, above → float32 products with float64
    solves. Without a measurement the class decides.
    """
    dev = resolve_device(device)
    if dev.type == "cpu":
        return Precision(torch.float64, torch.float64, "CPU: float64 throughout", ratio)
    info = device_info(dev)
    if ratio is None and measure:
        ratio = measure_float64_ratio(dev)
    cc = ".".join(map(str, info.compute_capability))
    if ratio is not None:
        fast = ratio <= FAST_FLOAT64_RATIO
        agrees = fast == (info.float64_class == FLOAT64_FULL)
        note = "" if agrees else f"; the table for compute capability {cc} says {info.float64_class} rate, the timing wins"
        how = f"float64 matmul measured {ratio:.1f}× slower than float32{note}"
    else:
        fast = info.float64_class == FLOAT64_FULL
        how = f"compute capability {cc}: {info.float64_class}-rate float64 (not measured)"
    if fast:
        return Precision(torch.float64, torch.float64, f"{info.name}: float64 throughout ({how})", ratio)
    return Precision(torch.float32, torch.float64,
                     f"{info.name}: float32 products, float64 solves ({how})", ratio)
