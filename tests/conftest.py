import os
import sys
import tempfile
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))

# Two cores shared with other work: two intra-op threads on tiny test problems thrash (10–100×
# slower under load). One thread keeps the suite fast and its timing stable.
torch.set_num_threads(1)

# The app's settings and log file go to a throwaway folder, never the user's (see ntk_studio.paths).
os.environ.setdefault("NTK_STUDIO_HOME", tempfile.mkdtemp(prefix="ntk-studio-test-home-"))


# ---- the device the engine tests run on: `pytest --device cuda` (bench/gpu_check.sh), default cpu.
# Tests that take the `device` fixture run there; the others are unaffected.
def pytest_addoption(parser):
    parser.addoption(
        "--device", default="cpu",
        help="device for tests that take the `device` fixture: auto, cpu, cuda or cuda:N (default cpu)",
    )


def pytest_report_header(config):
    return f"ntk_studio device: {config.getoption('--device')}"


@pytest.fixture(scope="session")
def device(pytestconfig):
    """The torch.device given by --device (default cpu); a device that does not exist stops the run."""
    from ntk_studio.core.device import resolve_device
    from ntk_studio.core.errors import DeviceError

    try:
        return resolve_device(pytestconfig.getoption("--device"))
    except DeviceError as exc:
        pytest.exit(f"--device: {exc}", returncode=pytest.ExitCode.USAGE_ERROR)
