"""App start-up: identity, icon, Help menu, saved geometry, readable failures (no bare tracebacks)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("PySide6")
pytest.importorskip("pytestqt")

import ntk_studio  # noqa: E402
from ntk_studio import logs, resources  # noqa: E402
from ntk_studio.app import main as app_main  # noqa: E402
from ntk_studio.app import platform_check, startup  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SUBPROCESS_TIMEOUT_S = 120
UNUSED_DISPLAY = ":987"  # no X server listens here
MISSING_SONAME = "libntk-studio-missing-test.so.0"


def _run(args: list[str], env: dict[str, str | None]) -> subprocess.CompletedProcess[str]:
    full = {k: v for k, v in os.environ.items() if k not in env}
    full.update({k: v for k, v in env.items() if v is not None})
    return subprocess.run([sys.executable, *args], cwd=ROOT, env=full, capture_output=True, text=True,
                          timeout=SUBPROCESS_TIMEOUT_S, check=False)


@pytest.fixture
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("NTK_STUDIO_HOME", str(tmp_path / "home"))
    return tmp_path / "home"


def test_python_m_ntk_studio_and_cli_print_their_versions():
    app = _run(["-m", "ntk_studio", "--version"], {})
    cli = _run(["-m", "ntk_studio.cli", "--version"], {})
    assert (app.returncode, app.stdout.strip()) == (0, f"ntk-studio {ntk_studio.__version__}")
    assert (cli.returncode, cli.stdout.strip()) == (0, f"ntk-studio-cli {ntk_studio.__version__}")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="display checks are for X11/Wayland")
@pytest.mark.parametrize("env, why", [
    ({"DISPLAY": None, "WAYLAND_DISPLAY": None, "QT_QPA_PLATFORM": None}, "no display was found"),
    ({"DISPLAY": UNUSED_DISPLAY, "WAYLAND_DISPLAY": None, "QT_QPA_PLATFORM": "xcb"}, None),
    ({"QT_QPA_PLATFORM": "nosuchplugin"}, "'nosuchplugin', which is not installed (installed: "),
])
def test_no_window_ends_in_a_message_pointing_at_the_cli(tmp_path, env, why):
    result = _run(["-m", "ntk_studio"], {**env, "NTK_STUDIO_HOME": str(tmp_path)})
    assert result.returncode == app_main.EXIT_NO_GUI, result.stderr
    assert "Traceback" not in result.stderr and "ntk-studio-cli demo" in result.stderr
    if why is None:  # the X11 plugin loads on a complete system; otherwise the missing library is named
        loads = platform_check.xcb_plugin_problem(_xcb_plugin()) is None
        why = f"no X server answers on DISPLAY={UNUSED_DISPLAY}" if loads else "Qt's X11 plugin needs"
    assert why in result.stderr
    assert why in (tmp_path / "log" / logs.LOG_FILE_NAME).read_text(), "the reason is logged too"


def _xcb_plugin() -> Path:
    from PySide6.QtCore import QLibraryInfo

    return Path(QLibraryInfo.path(QLibraryInfo.LibraryPath.PluginsPath)) / "platforms" / platform_check.XCB_PLUGIN


@pytest.mark.skipif(shutil.which("cc") is None or not sys.platform.startswith("linux"), reason="needs a C compiler")
def test_plugin_with_a_missing_system_library_is_named(tmp_path, monkeypatch):
    # A stand-in for libqxcb.so that links a library which is then removed: the dlopen Qt would do fails.
    src = tmp_path / "x.c"
    src.write_text("int ntk_studio_test_symbol(void) { return 1; }\n")
    libdir = tmp_path / "lib"
    libdir.mkdir()
    subprocess.run(["cc", "-shared", "-fPIC", "-o", str(libdir / MISSING_SONAME), f"-Wl,-soname,{MISSING_SONAME}",
                    str(src)], check=True, timeout=SUBPROCESS_TIMEOUT_S)
    plugins = tmp_path / "plugins"
    (plugins / "platforms").mkdir(parents=True)
    subprocess.run(["cc", "-shared", "-fPIC", "-o", str(plugins / "platforms" / platform_check.XCB_PLUGIN), str(src),
                    "-L", str(libdir), "-Wl,--no-as-needed", f"-l:{MISSING_SONAME}"], check=True, timeout=SUBPROCESS_TIMEOUT_S)
    (libdir / MISSING_SONAME).unlink()
    monkeypatch.setattr(sys, "platform", "linux")
    monkeypatch.setenv("DISPLAY", ":0")
    monkeypatch.delenv("QT_QPA_PLATFORM", raising=False)
    monkeypatch.delenv("WAYLAND_DISPLAY", raising=False)
    why = platform_check.platform_problem(plugins)
    assert why is not None and f"needs the system library {MISSING_SONAME}" in why
    assert f"install the system package that provides {MISSING_SONAME}" in why


def test_known_missing_library_names_its_debian_package(monkeypatch, tmp_path):
    def fail(_path):
        raise OSError("libxcb-cursor.so.0: cannot open shared object file: No such file or directory")

    monkeypatch.setattr(platform_check.ctypes, "CDLL", fail)
    why = platform_check.xcb_plugin_problem(tmp_path / "libqxcb.so")
    assert "`apt-get install libxcb-cursor0`" in why and "libxcb-icccm4" in why


def test_headless_and_wayland_platforms_need_no_x_server(monkeypatch, tmp_path):
    (tmp_path / "platforms").mkdir()
    for name in ("offscreen", "wayland", "xcb"):
        (tmp_path / "platforms" / f"libq{name}.so").write_bytes(b"")
    monkeypatch.setattr(sys, "platform", "linux")
    monkeypatch.delenv("DISPLAY", raising=False)
    monkeypatch.setenv("QT_QPA_PLATFORM", "offscreen")
    assert platform_check.platform_problem(tmp_path) is None
    monkeypatch.setenv("QT_QPA_PLATFORM", "wayland")
    monkeypatch.delenv("WAYLAND_DISPLAY", raising=False)
    assert platform_check.platform_problem(tmp_path) == "WAYLAND_DISPLAY is not set"
    monkeypatch.setenv("WAYLAND_DISPLAY", "wayland-0")
    assert platform_check.platform_problem(tmp_path) is None


def test_application_identity_and_icon(qapp, home):
    app = startup.create_application()
    assert app is qapp
    assert (app.applicationName(), app.organizationName(), app.applicationVersion()) == (
        "NTK Studio", "NTK Studio", ntk_studio.__version__)
    assert app.desktopFileName() == resources.APP_ID
    sizes = sorted(s.width() for s in app.windowIcon().availableSizes())
    assert sizes == list(resources.ICON_SIZES)


def test_decorate_adds_help_menu_icon_and_remembers_geometry(qtbot, qapp, home):
    from PySide6.QtGui import QGuiApplication
    from PySide6.QtWidgets import QMainWindow

    logs.setup_file_logging()
    first = QMainWindow()
    qtbot.addWidget(first)
    first.resize(640, 410)
    startup.decorate(first)
    assert not first.windowIcon().isNull()
    help_menu = first.menuBar().actions()[-1].menu()
    names = [a.objectName() for a in help_menu.actions() if not a.isSeparator()]
    assert names == ["copy_bug_report", "open_log_folder", "about"]
    help_menu.actions()[0].trigger()
    report = QGuiApplication.clipboard().text()
    assert report.startswith("NTK Studio bug report") and f"ntk-studio {ntk_studio.__version__}" in report

    qapp.aboutToQuit.emit()  # what quitting the app does: the geometry is saved
    second = QMainWindow()
    qtbot.addWidget(second)
    second.resize(300, 200)
    startup.decorate(second)
    assert (second.width(), second.height()) == (640, 410)


def test_window_failure_at_start_up_is_one_readable_message_and_logged(monkeypatch, capsys, home):
    def broken_window(*args, **kwargs):
        raise RuntimeError("the plot widget could not be created")

    monkeypatch.setattr("ntk_studio.app.main_window.MainWindow", broken_window)
    assert app_main.main(["--quit"]) == startup.EXIT_FAILED
    err = capsys.readouterr().err
    assert "NTK Studio could not start: RuntimeError: the plot widget could not be created" in err
    assert "Traceback" not in err and "--bug-report" in err
    logged = (home / "log" / logs.LOG_FILE_NAME).read_text()
    assert "start-up failed" in logged and "Traceback" in logged and "broken_window" in logged


def test_bug_report_flag_prints_the_report(capsys, home):
    assert app_main.main(["--bug-report"]) == 0
    out = capsys.readouterr().out
    assert f"ntk-studio {ntk_studio.__version__}" in out and f"log file: {home / 'log'}" in out


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="desktop entries are freedesktop (Linux)")
def test_install_desktop_entry_flag_points_exec_at_this_launcher(capsys, home, monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "share"))
    launcher = Path(sys.executable).parent / "ntk-studio"
    if not launcher.exists():
        pytest.skip(f"no ntk-studio launcher next to {sys.executable} (install the project into this venv)")
    assert app_main.main(["--install-desktop-entry"]) == 0
    entry = tmp_path / "share" / "applications" / f"{resources.APP_ID}.desktop"
    # The entry opens project files given by the file manager (%f, the .ntkproj MIME type).
    assert f"Exec={launcher.absolute()} %f" in entry.read_text().splitlines()
    assert f"installed {entry}" in capsys.readouterr().out
    assert app_main.main(["--uninstall-desktop-entry"]) == 0 and not entry.exists()


def test_log_panel_lines_reach_the_log_file_and_the_bug_report(home):
    from types import SimpleNamespace

    from ntk_studio.app.main_window import MainWindow

    logs.setup_file_logging()
    shown: list[str] = []
    panel_owner = SimpleNamespace(view=SimpleNamespace(append_log=shown.append))
    MainWindow._log(panel_owner, "[j7] fine-tuned 300 epochs")
    assert shown == ["[j7] fine-tuned 300 epochs"]
    assert logs.read_log_tail(1)[0].endswith("INFO ntk_studio.app: [j7] fine-tuned 300 epochs")
    assert "[j7] fine-tuned 300 epochs" in logs.bug_report()
