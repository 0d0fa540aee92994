"""Readable numbers, the prediction table, umask-respecting writes and the project MIME type (no window)."""

from __future__ import annotations

import csv
import io
import os
import stat
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from ntk_studio.app.file_output import write_atomic
from ntk_studio.app.numbers import fmt, fmt_bytes, fmt_seconds
from ntk_studio.desktop_entry import MIME_PACKAGE, PROJECT_MIME

ROOT = Path(__file__).resolve().parent.parent
MIME_FILE = ROOT / "resources" / "org.ntkstudio.NTKStudio.mime.xml"


@pytest.mark.parametrize(("value", "text"), [
    (0.13296772369788148, "0.133"), (1.0, "1"), (0.003, "0.003"), (0.000404, "4.04e-04"), (1234567.0, "1.235e+06"),
    (12345.678, "1.235e+04"), (50000.0, "5e+04"), (-2.5, "-2.5"), (0, "0"),
    (4801, "4,801"), (None, "—"), (float("nan"), "—"), (float("inf"), "—"), (True, "—"),
])
def test_fmt_gives_four_significant_digits_and_scientific_outside_a_readable_range(value, text):
    assert fmt(value) == text


def test_fmt_units_durations_and_sizes():
    assert fmt(0.5, "s") == "0.5 s"
    assert fmt_seconds(0.000404) == "404 µs" and fmt_seconds(0.0123) == "12.3 ms" and fmt_seconds(4.561) == "4.56 s"
    assert fmt_seconds(185) == "3 min 5 s" and fmt_seconds(None) == "—"
    assert fmt_bytes(1536) == "1.5 KiB" and fmt_bytes(1.3 * 1024**3) == "1.3 GiB" and fmt_bytes(12) == "12 B"


def test_predictions_table_regression_and_classification():
    pytest.importorskip("PySide6")
    from ntk_studio.app.result_exports import predictions_csv, predictions_table

    gp = {"task": "regression", "grid": False, "test_y": [[1.0], [2.0]], "test_base": [0.5, 1.5],
          "test_mean": [0.9, 2.1], "test_std": [0.1, 0.2]}
    header, rows = predictions_table({"fit_gp": gp, "finetune": {"grid_pred": [1.1, 1.9]}})
    assert header == ["row", "target", "unadapted", "gp_mean", "gp_std", "finetuned"]
    assert rows[1] == [1, 2.0, 1.5, 2.1, 0.2, 1.9]
    lines = list(csv.reader(io.StringIO(predictions_csv({"fit_gp": gp}))))
    assert lines[0] == header[:-1] and float(lines[2][3]) == 2.1
    clf = {"task": "classification", "test_y": [1, 0], "class_names": ["no", "yes"], "probs": [[0.2, 0.8], [0.6, 0.4]],
           "base_probs": [[0.5, 0.5], [0.5, 0.5]]}
    header, rows = predictions_table({"fit_gp": clf})
    assert header == ["row", "label", "p_unadapted[no]", "p_unadapted[yes]", "p_linearized[no]", "p_linearized[yes]"]
    assert rows[0][1] == "yes" and rows[0][5] == 0.8
    assert predictions_table({}) == ([], [])


@pytest.mark.parametrize("umask", [0o022, 0o077, 0o002])
def test_app_writes_follow_the_umask(tmp_path, umask):
    old = os.umask(umask)
    try:
        path = write_atomic(tmp_path / "out.csv", b"a,b\n")
    finally:
        os.umask(old)
    assert path.read_bytes() == b"a,b\n"
    assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~umask
    assert [p.name for p in tmp_path.iterdir()] == ["out.csv"]  # no temporary file left


def test_project_mime_type_is_declared_everywhere():
    assert MIME_FILE.read_text(encoding="utf-8").split("\n", 2)[2] == MIME_PACKAGE.split("\n", 1)[1]
    ns = {"m": "http://www.freedesktop.org/standards/shared-mime-info"}
    node = ET.fromstring(MIME_PACKAGE).find("m:mime-type", ns)
    assert node.get("type") == PROJECT_MIME and node.find("m:glob", ns).get("pattern") == "*.ntkproj"
    for desktop in (ROOT / "resources" / "org.ntkstudio.NTKStudio.desktop",
                    ROOT / "ntk_studio" / "resources" / "org.ntkstudio.NTKStudio.desktop"):
        lines = dict(line.split("=", 1) for line in desktop.read_text().splitlines() if "=" in line)
        assert PROJECT_MIME in lines["MimeType"].split(";") and lines["Exec"].endswith(" %f")
    meta = ET.parse(ROOT / "resources" / "org.ntkstudio.NTKStudio.metainfo.xml").getroot()
    assert PROJECT_MIME in {m.text for m in meta.iter("mediatype")}


def test_recent_entries_say_what_they_are(tmp_path):
    from ntk_studio.app.recent import describe_recent

    project = tmp_path / "runs" / "week1.ntkproj"
    project.parent.mkdir()
    project.write_bytes(b"x" * 2048)
    text, tip = describe_recent(str(project))
    assert text == "week1.ntkproj — project in runs" and "2 KiB" in tip and str(project) in tip
    assert describe_recent(str(tmp_path))[0].endswith("image folder in " + tmp_path.parent.name)
    assert describe_recent(str(tmp_path / "gone.pt"))[0] == "gone.pt — missing"
