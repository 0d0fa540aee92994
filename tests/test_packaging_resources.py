"""Desktop resources: icon sizes, package copies in sync, desktop entry and metainfo valid and consistent."""

from __future__ import annotations

import configparser
import importlib.util
import shutil
import struct
import subprocess
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

import ntk_studio
from ntk_studio import resources
from ntk_studio.desktop_entry import install_desktop_entry, quote_exec, uninstall_desktop_entry

ROOT = Path(__file__).resolve().parents[1]
APP_ID = resources.APP_ID
HICOLOR = ROOT / "resources" / "icons" / "hicolor"
DESKTOP = ROOT / "resources" / f"{APP_ID}.desktop"
METAINFO = ROOT / "resources" / f"{APP_ID}.metainfo.xml"
SVG_MASTER = HICOLOR / "scalable" / "apps" / f"{APP_ID}.svg"
PNG_RGBA = 6  # IHDR colour type: truecolour with alpha
RENDER_CHECK_SIZE = 64
CHANNEL_TOLERANCE = 16  # 0-255: antialiasing differences between Qt versions stay below this
MAX_CHANGED_FRACTION = 0.005  # recolouring just the three data dots changes 2.3% of the 64px pixels
TOOL_TIMEOUT_S = 60


def _png_header(path: Path) -> tuple[int, int, int]:
    """Return (width, height, colour type) from a PNG's IHDR chunk."""
    data = path.read_bytes()[:33]
    assert data[:8] == b"\x89PNG\r\n\x1a\n", f"{path} is not a PNG"
    width, height, _depth, colour = struct.unpack(">IIBB", data[16:26])
    return width, height, colour


def _desktop(path: Path) -> configparser.SectionProxy:
    parser = configparser.ConfigParser(interpolation=None, delimiters=("=",))
    parser.optionxform = str
    parser.read(path, encoding="utf-8")
    return parser["Desktop Entry"]


@pytest.mark.parametrize("size", resources.ICON_SIZES)
def test_icon_png_has_its_size_and_alpha(size):
    path = HICOLOR / f"{size}x{size}" / "apps" / f"{APP_ID}.png"
    assert _png_header(path) == (size, size, PNG_RGBA)
    assert _png_header(resources.icon_png(size)) == (size, size, PNG_RGBA)


def test_icon_sizes_cover_16_to_512():
    assert min(resources.ICON_SIZES) == 16 and max(resources.ICON_SIZES) == 512
    shipped = sorted(int(p.parent.parent.name.split("x")[0]) for p in HICOLOR.glob("*x*/apps/*.png"))
    assert shipped == sorted(resources.ICON_SIZES)


def test_package_copies_match_resources_folder():
    pairs = [(SVG_MASTER, resources.icon_svg()), (DESKTOP, resources.desktop_entry()),
             (METAINFO, resources.metainfo())]
    pairs += [(HICOLOR / f"{s}x{s}" / "apps" / f"{APP_ID}.png", resources.icon_png(s)) for s in resources.ICON_SIZES]
    stale = [str(src.relative_to(ROOT)) for src, copy in pairs if src.read_bytes() != copy.read_bytes()]
    assert not stale, f"run `python packaging/render_icons.py`: package copies differ for {stale}"


def test_pngs_are_renderings_of_the_svg_master(qapp):
    pytest.importorskip("PySide6.QtSvg")
    import numpy as np
    from PySide6.QtGui import QImage

    spec = importlib.util.spec_from_file_location("render_icons", ROOT / "packaging" / "render_icons.py")
    render_icons = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(render_icons)

    def pixels(image: QImage) -> np.ndarray:
        image = image.convertToFormat(QImage.Format.Format_RGBA8888)
        return np.frombuffer(image.constBits(), np.uint8).reshape(image.height(), image.width(), 4).astype(float)

    fresh = pixels(render_icons.render(SVG_MASTER, RENDER_CHECK_SIZE))
    shipped = pixels(QImage(str(render_icons.png_path(RENDER_CHECK_SIZE))))
    assert fresh[..., 3].mean() > 100, "the master renders (nearly) transparent"
    changed = (np.abs(fresh - shipped).max(axis=-1) > CHANNEL_TOLERANCE).mean()
    assert changed <= MAX_CHANGED_FRACTION, f"{changed:.1%} of the pixels differ: run packaging/render_icons.py"


def test_desktop_entry_names_the_app_and_its_icon():
    from ntk_studio.app.startup import APP_NAME

    entry = _desktop(DESKTOP)
    assert entry["Type"] == "Application" and entry["Name"] == APP_NAME
    assert entry["Exec"] == "ntk-studio %f" and entry["Icon"] == APP_ID
    assert "application/x-ntkstudio-project" in entry["MimeType"].split(";")
    assert entry["StartupWMClass"] == APP_NAME  # Qt's X11 WM_CLASS class is the application name
    assert entry["Terminal"] == "false"


def test_metainfo_matches_desktop_entry_and_version():
    root = ET.parse(METAINFO).getroot()
    assert root.get("type") == "desktop-application"
    assert root.findtext("id") == APP_ID
    assert root.find("launchable").text == DESKTOP.name
    assert {b.text for b in root.iter("binary")} == {"ntk-studio", "ntk-studio-cli"}
    newest = root.find("releases/release")
    assert newest.get("version") == ntk_studio.__version__, "add a <release> for the new version"


@pytest.mark.skipif(shutil.which("desktop-file-validate") is None,
                    reason="desktop-file-validate missing (apt-get install desktop-file-utils)")
def test_desktop_file_validate_accepts_the_entry():
    result = subprocess.run(["desktop-file-validate", str(DESKTOP)], capture_output=True, text=True,
                            timeout=TOOL_TIMEOUT_S)
    assert result.returncode == 0 and "error" not in result.stdout, result.stdout + result.stderr


@pytest.mark.skipif(shutil.which("appstreamcli") is None, reason="appstreamcli missing (apt-get install appstream)")
def test_appstreamcli_validates_the_metainfo():
    result = subprocess.run(["appstreamcli", "validate", "--no-net", str(METAINFO)], capture_output=True, text=True,
                            timeout=TOOL_TIMEOUT_S)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "E:" not in result.stdout and "W:" not in result.stdout, result.stdout


def test_quote_exec_follows_the_desktop_entry_spec():
    assert quote_exec(Path("/opt/venv/bin/ntk-studio")) == "/opt/venv/bin/ntk-studio"
    assert quote_exec(Path("/home/a b/ntk-studio")) == '"/home/a b/ntk-studio"'
    assert quote_exec(Path("/x/$y/ntk-studio")) == '"/x/\\\\$y/ntk-studio"'
    assert quote_exec(Path("/x/50%/ntk-studio")) == "/x/50%%/ntk-studio"


def test_install_desktop_entry_writes_a_valid_entry_and_uninstall_removes_it(tmp_path):
    launcher = tmp_path / "my apps" / "bin" / "ntk-studio"
    launcher.parent.mkdir(parents=True)
    launcher.write_text("#!/bin/sh\n")
    launcher.chmod(0o755)
    root = tmp_path / "share"
    written = install_desktop_entry(launcher=launcher, root=root)
    entry_path = root / "applications" / f"{APP_ID}.desktop"
    assert entry_path in written and len(written) == 4 + len(resources.ICON_SIZES)
    entry = _desktop(entry_path)
    assert entry["Exec"] == f'"{launcher}" %f' and entry["TryExec"] == str(launcher)
    assert (root / "mime" / "packages" / f"{APP_ID}.xml") in written
    icon = root / "icons" / "hicolor" / "48x48" / "apps" / f"{APP_ID}.png"
    assert icon.read_bytes() == resources.icon_png(48).read_bytes()
    if shutil.which("desktop-file-validate"):
        result = subprocess.run(["desktop-file-validate", str(entry_path)], capture_output=True, text=True,
                                timeout=TOOL_TIMEOUT_S)
        assert result.returncode == 0, result.stdout
    assert sorted(uninstall_desktop_entry(root=root)) == sorted(written)
    assert not any(p.exists() for p in written)
