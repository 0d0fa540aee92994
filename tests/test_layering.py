"""Layering: imports point downwards, the engine never needs Qt, and importing the package is cheap.

Each check runs in a fresh interpreter (``sys.executable -c ...``) so that modules imported by other
tests in this pytest process cannot hide or fake a result.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
QT_PACKAGES = ("PySide6", "pyqtgraph", "shiboken6")
SUBPROCESS_TIMEOUT_S = 300


def _run_python(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=SUBPROCESS_TIMEOUT_S,
        check=False,
    )


def _last_json_line(result: subprocess.CompletedProcess[str]) -> object:
    assert result.returncode == 0, f"subprocess failed (rc={result.returncode}):\n{result.stdout}\n{result.stderr}"
    lines = [line for line in result.stdout.splitlines() if line.strip()]
    assert lines, f"subprocess printed nothing:\n{result.stderr}"
    return json.loads(lines[-1])


def test_importing_package_does_not_import_torch_or_qt() -> None:
    result = _run_python(
        """
        import json, sys
        import ntk_studio
        heavy = {"torch", "PySide6", "pyqtgraph", "shiboken6"}
        print(json.dumps(sorted({m.split(".")[0] for m in sys.modules} & heavy)))
        """
    )
    loaded = _last_json_line(result)
    assert loaded == [], f"`import ntk_studio` pulled in heavy modules: {loaded}"


def test_core_imports_with_qt_blocked_and_loads_no_qt() -> None:
    result = _run_python(
        f"""
        import importlib.abc, json, sys

        BLOCKED = {QT_PACKAGES!r}

        class BlockQt(importlib.abc.MetaPathFinder):
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] in BLOCKED:
                    raise ModuleNotFoundError(f"{{name}} is blocked by test_layering", name=name)
                return None

        assert not [m for m in sys.modules if m.split(".")[0] in BLOCKED], "Qt loaded before the test began"
        sys.meta_path.insert(0, BlockQt())

        import ntk_studio.core  # must succeed without Qt

        # Control: the blocker really makes Qt unimportable in this interpreter.
        try:
            import PySide6  # noqa: F401
        except ImportError:
            blocker_works = True
        else:
            blocker_works = False

        leaked = sorted(
            m for m in sys.modules
            if m.split(".")[0] in BLOCKED or m == "ntk_studio.app" or m.startswith("ntk_studio.app.")
        )
        is_regular_package = getattr(ntk_studio.core, "__file__", None) is not None
        print(json.dumps({{"blocker_works": blocker_works, "leaked": leaked, "regular": is_regular_package}}))
        """
    )
    report = _last_json_line(result)
    assert report["regular"], "ntk_studio.core has no __init__.py: the import checked nothing (namespace package)"
    assert report["blocker_works"], "the Qt blocker did not block `import PySide6`; the test proves nothing"
    assert report["leaked"] == [], f"importing ntk_studio.core loaded GUI/Qt modules: {report['leaked']}"


def test_import_linter_contracts_pass() -> None:
    exe = Path(sys.executable).parent / "lint-imports"
    if not exe.exists():
        pytest.skip(f"lint-imports not found next to {sys.executable}; install the dev extra: pip install -e '.[dev]'")
    result = subprocess.run(
        [str(exe)],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=SUBPROCESS_TIMEOUT_S,
        check=False,
    )
    assert result.returncode == 0, f"import-linter contracts failed:\n{result.stdout}\n{result.stderr}"
