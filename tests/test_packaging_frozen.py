"""The PyInstaller entry script's dispatch: app, CLI (by name or `cli`), and `-m` for the worker."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

import ntk_studio

ENTRY = Path(__file__).resolve().parents[1] / "packaging" / "ntk_studio_frozen.py"


@pytest.fixture
def frozen(monkeypatch):
    spec = importlib.util.spec_from_file_location("ntk_studio_frozen", ENTRY)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    monkeypatch.setattr(sys, "argv", ["/opt/ntk-studio/ntk-studio"])
    return module


def _version_line(capsys) -> str:
    return capsys.readouterr().out.strip()


def test_cli_subcommand_and_cli_symlink_name_run_the_cli(frozen, capsys, monkeypatch):
    with pytest.raises(SystemExit) as exit_info:
        frozen.main(["cli", "--version"])
    assert exit_info.value.code == 0 and _version_line(capsys) == f"ntk-studio-cli {ntk_studio.__version__}"
    monkeypatch.setattr(sys, "argv", ["/opt/ntk-studio/ntk-studio-cli"])
    with pytest.raises(SystemExit):
        frozen.main(["--version"])
    assert _version_line(capsys) == f"ntk-studio-cli {ntk_studio.__version__}"


def test_plain_name_runs_the_app(frozen, capsys):
    with pytest.raises(SystemExit):
        frozen.main(["--version"])
    assert _version_line(capsys) == f"ntk-studio {ntk_studio.__version__}"


def test_dash_m_runs_package_modules_only(frozen, capsys, monkeypatch):
    with pytest.raises(SystemExit) as exit_info:
        frozen.main(["-m", "ntk_studio.cli", "--version"])  # as WorkerClient runs `-m ntk_studio.jobs.worker`
    assert exit_info.value.code == 0 and _version_line(capsys) == f"ntk-studio-cli {ntk_studio.__version__}"
    assert frozen.main(["-m", "os"]) == 2
    assert "ntk_studio.<module>" in capsys.readouterr().err
