"""Export files are written atomically: an error names the user's path and leaves no temporary file."""

from __future__ import annotations

import pytest
import torch

from ntk_studio.core.errors import ExportError
from ntk_studio.core.export.files import write_native


@pytest.fixture(scope="module")
def program():
    return torch.export.export(torch.nn.Linear(2, 1), (torch.zeros(3, 2),))


def test_written_file_replaces_the_old_one(tmp_path, program):
    path = tmp_path / "m.pt2"
    path.write_bytes(b"old")
    size = write_native(program, path, {"k": "v"})
    assert size == path.stat().st_size > 3 and sorted(p.name for p in tmp_path.iterdir()) == ["m.pt2"]


def test_a_failed_replace_names_the_path_and_leaves_no_temporary(tmp_path, program):
    path = tmp_path / "taken.pt2"
    path.mkdir()  # os.replace(file, directory) fails
    with pytest.raises(ExportError, match=f"Cannot write {path}"):
        write_native(program, path, {})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["taken.pt2"]


def test_an_unwritable_folder_names_the_path(tmp_path, program):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(ExportError, match="Cannot write .*file/m.pt2"):
        write_native(program, blocker / "m.pt2", {})
