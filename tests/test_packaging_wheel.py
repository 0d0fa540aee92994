"""The wheel, end to end: build it, install it into a fresh venv, run the installed CLI.

The fresh venv gets torch==2.13.0 from the local CPU wheel only (``--no-index``: if that wheel is
not where pip's find-links point, the test skips rather than download several GB of CUDA torch);
every other dependency is resolved by pip from the wheel's own metadata, so a dependency missing
from pyproject.toml fails here. Takes about 1-2 minutes (mostly unpacking torch); the venv is
deleted afterwards (1.2 GB).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

import ntk_studio
from ntk_studio.resources import APP_ID, ICON_SIZES

ROOT = Path(__file__).resolve().parents[1]
SOURCES = ("pyproject.toml", "README.md", "ntk_studio")  # what setuptools needs to build the wheel
BUILD_TIMEOUT_S = 300
INSTALL_TIMEOUT_S = 900
RUN_TIMEOUT_S = 300
TORCH_PIN = "torch==2.13.0"
METRIC_TOLERANCE = 1e-9  # the installed package must reproduce the source tree's numbers exactly


def _run(cmd: list, timeout: float, cwd: Path, env: dict | None = None) -> subprocess.CompletedProcess[str]:
    result = subprocess.run([str(c) for c in cmd], cwd=cwd, env=env, capture_output=True, text=True,
                            timeout=timeout, check=False)
    return result


def _ok(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 0, f"{result.args} failed ({result.returncode}):\n{result.stdout[-3000:]}\n" \
                                   f"{result.stderr[-3000:]}"
    return result.stdout


@pytest.mark.slow
def test_wheel_installs_into_a_fresh_venv_and_its_cli_runs_the_demo(tmp_path):
    # Build from a copy, so concurrent builds in the checkout (build/, *.egg-info) cannot interfere.
    src = tmp_path / "src"
    src.mkdir()
    for name in SOURCES:
        if (ROOT / name).is_dir():
            shutil.copytree(ROOT / name, src / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        else:
            shutil.copy2(ROOT / name, src / name)
    dist = tmp_path / "dist"
    _ok(_run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", dist, src],
             BUILD_TIMEOUT_S, tmp_path))
    (wheel,) = dist.glob("ntk_studio-*.whl")
    assert wheel.name.startswith(f"ntk_studio-{ntk_studio.__version__}-py3-none-any")
    names = set(zipfile.ZipFile(wheel).namelist())
    shipped = {f"ntk_studio/resources/{APP_ID}-{s}.png" for s in ICON_SIZES} | {
        f"ntk_studio/resources/{APP_ID}.desktop", f"ntk_studio/resources/{APP_ID}.metainfo.xml",
        "ntk_studio/core/examples/weights/sine_mlp.safetensors"}
    assert shipped <= names, f"missing from the wheel: {sorted(shipped - names)}"
    entry_points = zipfile.ZipFile(wheel).read(f"ntk_studio-{ntk_studio.__version__}.dist-info/entry_points.txt")
    assert b"ntk-studio-cli = ntk_studio.cli.main:main" in entry_points
    assert b"ntk-studio = ntk_studio.app.main:main" in entry_points

    venv = tmp_path / "venv"
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env["NTK_STUDIO_HOME"] = str(tmp_path / "home")
    try:
        _ok(_run([sys.executable, "-m", "venv", venv], BUILD_TIMEOUT_S, tmp_path, env))
        py, bin_dir = venv / "bin" / "python", venv / "bin"
        pip = [py, "-m", "pip", "install", "-q", "--no-compile", "--disable-pip-version-check"]
        torch = _run([*pip, "--no-index", "--no-deps", TORCH_PIN], INSTALL_TIMEOUT_S, tmp_path, env)
        if torch.returncode != 0:
            pytest.skip(f"no local {TORCH_PIN} wheel in pip's find-links; not downloading CUDA torch:\n{torch.stderr}")
        _ok(_run([*pip, wheel], INSTALL_TIMEOUT_S, tmp_path, env))

        installed = _ok(_run([py, "-c", "import ntk_studio, torch, importlib.metadata as m; "
                                        "print(ntk_studio.__file__); print(torch.__version__); "
                                        "print(sorted(d.metadata['Name'] for d in m.distributions()))"],
                             RUN_TIMEOUT_S, tmp_path, env)).splitlines()
        assert Path(installed[0]).is_relative_to(venv), f"imported from {installed[0]}, not the fresh venv"
        assert installed[1] == "2.13.0+cpu"
        assert "nvidia" not in installed[2].lower() and "PySide6" not in installed[2]

        version = _ok(_run([bin_dir / "ntk-studio-cli", "--version"], RUN_TIMEOUT_S, tmp_path, env))
        assert version.strip() == f"ntk-studio-cli {ntk_studio.__version__}"
        demo = _ok(_run([bin_dir / "ntk-studio-cli", "demo", "--quiet", "--json", tmp_path / "installed.json"],
                        RUN_TIMEOUT_S, tmp_path, env))
        assert "linearized GP" in demo

        # Without the app extra the GUI launcher still answers --version and explains what is missing.
        gui_version = _ok(_run([bin_dir / "ntk-studio", "--version"], RUN_TIMEOUT_S, tmp_path, env))
        assert gui_version.strip() == f"ntk-studio {ntk_studio.__version__}"
        no_gui = _run([bin_dir / "ntk-studio"], RUN_TIMEOUT_S, tmp_path, {**env, "QT_QPA_PLATFORM": "offscreen"})
        assert no_gui.returncode == 2 and "pip install 'ntk-studio[app]'" in no_gui.stderr
        assert "Traceback" not in no_gui.stderr
    finally:
        shutil.rmtree(venv, ignore_errors=True)

    reference = tmp_path / "source.json"
    _ok(_run([sys.executable, "-m", "ntk_studio.cli", "demo", "--quiet", "--json", reference], RUN_TIMEOUT_S, ROOT,
             {**env, "PYTHONPATH": str(ROOT)}))
    got, want = (json.loads(p.read_text()) for p in (tmp_path / "installed.json", reference))
    for method in ("unadapted", "gp"):
        for metric in ("rmse", "nll", "coverage95"):
            assert abs(got[method][metric] - want[method][metric]) <= METRIC_TOLERANCE, (method, metric)
    assert got["gp"]["rmse"] < 0.5 * got["unadapted"]["rmse"]
