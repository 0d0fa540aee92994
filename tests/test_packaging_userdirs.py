"""User folders (platformdirs / NTK_STUDIO_HOME), the rotating log file, bug reports and settings."""

from __future__ import annotations

import json
import logging
import sys

import pytest

import ntk_studio
from ntk_studio import logs, paths, user_settings

SMALL_LOG_BYTES = 2000  # rotate after a few dozen records so the test sees several files


@pytest.fixture
def home(tmp_path, monkeypatch):
    """Return a fresh NTK_STUDIO_HOME; the file handler is removed again afterwards."""
    monkeypatch.setenv(paths.HOME_ENV, str(tmp_path / "home"))
    yield tmp_path / "home"
    logger = logging.getLogger(logs.ROOT_LOGGER)
    for handler in list(logger.handlers):
        if getattr(handler, logs._MARK, False):
            logger.removeHandler(handler)
            handler.close()


def test_home_env_puts_every_folder_under_it(home):
    dirs = paths.user_dirs()
    assert {dirs.config, dirs.data, dirs.cache, dirs.log} == {home / "config", home / "data", home / "cache",
                                                              home / "log"}
    assert not home.exists(), "folders are created only on ensure()"
    dirs.ensure()
    assert all(p.is_dir() for p in (dirs.config, dirs.data, dirs.cache, dirs.log))


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="XDG folders are the Linux convention")
def test_without_home_env_linux_follows_xdg(tmp_path, monkeypatch):
    monkeypatch.delenv(paths.HOME_ENV, raising=False)
    for name in ("CONFIG", "CACHE", "STATE", "DATA"):
        monkeypatch.setenv(f"XDG_{name}_HOME", str(tmp_path / name.lower()))
    dirs = paths.user_dirs()
    assert dirs.config == tmp_path / "config" / paths.APP_DIR_NAME
    assert dirs.cache == tmp_path / "cache" / paths.APP_DIR_NAME
    assert dirs.data == tmp_path / "data" / paths.APP_DIR_NAME
    assert dirs.log == tmp_path / "state" / paths.APP_DIR_NAME / "log"


def test_log_file_receives_package_records_with_time_process_and_logger(home):
    path = logs.setup_file_logging()
    assert path == home / "log" / logs.LOG_FILE_NAME
    logging.getLogger("ntk_studio.app").info("window opened on %s", "sine")
    logging.getLogger("somebody.else").warning("not ours")
    text = path.read_text(encoding="utf-8")
    assert "INFO ntk_studio.app: window opened on sine" in text
    assert "not ours" not in text
    assert logs.read_log_tail(5)[-1].endswith("window opened on sine")


def test_setup_twice_keeps_one_handler(home):
    logs.setup_file_logging()
    logs.setup_file_logging()
    logging.getLogger("ntk_studio").warning("once")
    assert logs.log_file().read_text(encoding="utf-8").count("once") == 1


def test_log_rotates_keeps_backups_and_tail_spans_the_rotation(home, monkeypatch):
    monkeypatch.setattr(logs, "LOG_MAX_BYTES", SMALL_LOG_BYTES)
    path = logs.setup_file_logging()
    log = logging.getLogger("ntk_studio.test")
    for i in range(400):
        log.info("record %04d %s", i, "x" * 40)
    files = sorted(p.name for p in path.parent.iterdir())
    assert files == [logs.LOG_FILE_NAME] + [f"{logs.LOG_FILE_NAME}.{k}" for k in range(1, logs.LOG_BACKUPS + 1)]
    assert all(p.stat().st_size <= SMALL_LOG_BYTES for p in path.parent.iterdir())
    current = len(path.read_text(encoding="utf-8").splitlines())
    tail = logs.read_log_tail(current + 5)
    assert len(tail) == current + 5, "the tail reaches back into ntk-studio.log.1"
    numbers = [int(line.split("record ")[1][:4]) for line in tail]
    assert numbers == list(range(400 - len(tail), 400))


def test_unwritable_log_folder_turns_file_logging_off_without_raising(home, capsys):
    blocker = home / "file-not-folder"
    blocker.parent.mkdir(parents=True)
    blocker.write_text("")
    assert logs.setup_file_logging(path=blocker / "ntk-studio.log") is None
    assert "logging to it is off" in capsys.readouterr().err


def test_bug_report_has_versions_folders_and_log_tail(home):
    logs.setup_file_logging()
    logging.getLogger("ntk_studio.app").error("worker crashed: boom")
    report = logs.bug_report({"Qt platform": "offscreen"})
    assert f"ntk-studio {ntk_studio.__version__}" in report
    assert "torch 2.13.0" in report and "Qt platform: offscreen" in report
    assert f"log file: {home / 'log' / logs.LOG_FILE_NAME}" in report
    assert report.rstrip().endswith("ERROR ntk_studio.app: worker crashed: boom")


def test_settings_round_trip_is_versioned_and_atomic(home):
    assert user_settings.load_settings() == {}
    path = user_settings.save_settings({"window_geometry": "AdnQ", "last_example": "sine"})
    assert json.loads(path.read_text())["version"] == user_settings.SETTINGS_VERSION
    assert user_settings.load_settings() == {"window_geometry": "AdnQ", "last_example": "sine"}
    assert [p.name for p in path.parent.iterdir()] == [user_settings.SETTINGS_FILE_NAME], "temp file left behind"


@pytest.mark.parametrize("content", ["{not json", '{"version": 99, "a": 1}', "[1, 2]"])
def test_broken_settings_give_defaults_and_are_kept_aside(home, content, caplog):
    path = user_settings.settings_file()
    path.parent.mkdir(parents=True)
    path.write_text(content)
    with caplog.at_level(logging.WARNING, logger="ntk_studio.settings"):
        assert user_settings.load_settings() == {}
    assert not path.exists()
    assert path.with_name(path.name + user_settings.BAD_SUFFIX).read_text() == content
    assert "using the defaults" in caplog.text
