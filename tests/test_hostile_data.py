"""Hostile data files and folders: a typed DataLoadError, one line, quickly, nothing read outside, nothing changed."""

from __future__ import annotations

import io
import os
import socket
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from test_hostile_support import make_fifo, refused

from ntk_studio.core.data import load_arrays, load_dataset, load_image_folder, load_table
from ntk_studio.core.data import _stream
from ntk_studio.core.errors import DataLoadError

TABLES = {
    "empty": (b"", "empty"),
    "whitespace": (b"  \n\n \t\n", "empty"),
    "nul bytes": (b"x,y\n1,2\x00\n3,4\n", "NUL"),
    "latin-1": ("x,y\n1,caf\xe9\n2,3\n".encode("latin-1"), "UTF-8"),
    "bad utf-16": (b"\xff\xfex\x00,\x00y\x00\n\x00\x00\xd8", "UTF-16"),
    "header only": (b"x,y\n", "no data rows"),
    "one row": (b"x,y\n1,2\n", "only one data row"),
    "ragged": (b"x,y\n1,2\n3\n4,5,6\n", "line 3 has 1"),
    "many ragged": (b"x,y\n" + b"1\n" * 50, "and 45 more"),
    "duplicate header": (b"x,x,y\n1,2,3\n4,5,6\n", "more than once"),
    "unnamed column": (b"x,,y\n1,2,3\n4,5,6\n", "no name"),
    "unbalanced quote": (b'x,y\n"1,2\n3,4\n' + b"5,6\n" * 3, "line"),
    "no target": (b"a,b\n1,2\n3,4\n", "'y' is not in"),
    "nan target": (b"x,y\n1,nan\n2,3\n3,4\n", "missing"),
    "inf feature": (b"x,y\n1,2\ninf,3\n3,4\n", "NaN or infinite"),
    "text target": (b"x,y\n1,a\n2,b\n3,c\n", "holds text"),
    "empty cells": (b"x,y\n1,\n,3\n3,4\n", "empty or missing"),
    "text feature": (b"x,y\na,1\nb,2\nc,3\n", "not numeric"),
    "typo in numbers": (b"x,y\n1,1\n2,2\nl3,3\n4,4\n", "non-numeric"),
    "only target": (b"y\n1\n2\n3\n", "no feature columns"),
    "1e400": (b"x,y\n1e400,1\n2,2\n3,3\n", "NaN or infinite"),
    "huge field": (b"x,y\n" + b"1" * 200_000 + b",2\n3,4\n", "field larger"),
}


@pytest.mark.parametrize("content", list(TABLES.values()), ids=list(TABLES))
def test_broken_table(tmp_path, content):
    data, phrase = content
    path = tmp_path / "t.csv"
    path.write_bytes(data)
    with refused(DataLoadError, phrase, inputs=(path,), folder=tmp_path):
        load_table(path, target="y")


def test_table_changing_between_passes_is_refused(tmp_path, monkeypatch):
    monkeypatch.setattr(_stream, "CHUNK_ROWS", 2)
    path = tmp_path / "t.csv"
    path.write_text("x,y\n1,1\n2,2\na,3\nb,4\nc,5\n")
    original = _stream._read_pass

    def read_then_change(p, *args):
        result = original(p, *args)
        path.write_text("x,y\n1,1\n2,2\na,3\nb,4\nd,5\n")
        return result

    monkeypatch.setattr(_stream, "_read_pass", read_then_change)
    with pytest.raises(DataLoadError, match="changed while it was being read"):
        load_table(path, target="y", one_hot=True)


def test_late_text_column_gets_its_original_cells(tmp_path, monkeypatch):
    monkeypatch.setattr(_stream, "CHUNK_ROWS", 3)
    path = tmp_path / "t.csv"
    path.write_text("c,y\n1,1\n01,2\n2,3\nx,4\ny,5\nz,6\nw,7\n")
    ds = load_table(path, target="y", one_hot=True)
    assert ds.feature_names == ("c=01", "c=1", "c=2", "c=w", "c=x", "c=y", "c=z")


ARRAYS = {
    "empty npy": ("a.npy", b"", "empty"),
    "truncated npy": ("a.npy", b"\x93NUMPY\x01\x00v\x00{'descr': '<f8', 'fortran_order': False, 'shape': (100, 3), }", ""),
    "npy magic only": ("a.npy", b"\x93NUMPY", ""),
    "not an npz": ("a.npz", b"PK\x03\x04garbage" * 10, ""),
    "random bytes npz": ("a.npz", os.urandom(256), ""),
}


@pytest.mark.parametrize("content", list(ARRAYS.values()), ids=list(ARRAYS))
def test_broken_array_file(tmp_path, content):
    name, data, phrase = content
    path = tmp_path / name
    path.write_bytes(data)
    with refused(DataLoadError, phrase, inputs=(path,), folder=tmp_path):
        load_arrays(path)


def _npz(path: Path, **arrays) -> Path:
    np.savez(path, **arrays)
    return path


def _bad_crc(path: Path) -> Path:
    _npz(path, X=np.arange(60.0).reshape(20, 3), y=np.arange(20.0))
    data = bytearray(path.read_bytes())
    start = data.index(b"X.npy") + 200
    data[start] ^= 0xFF
    path.write_bytes(bytes(data))
    return path


ARRAY_MAKERS = {
    "object array in npz": (lambda p: _npz(p, X=np.array([{"a": 1}, None] * 5, dtype=object), y=np.zeros(10)),
                            "a.npz"),
    "bad crc npz": (_bad_crc, "a.npz"),
    "npz without X": (lambda p: _npz(p, A=np.zeros((4, 2)), y=np.zeros(4)), "a.npz"),
    "string X": (lambda p: _npz(p, X=np.array([["a", "b"]] * 4), y=np.zeros(4)), "a.npz"),
    "complex X": (lambda p: _npz(p, X=np.ones((4, 2)) * 1j, y=np.zeros(4)), "a.npz"),
    "nan X": (lambda p: _npz(p, X=np.array([[1.0, np.nan]] * 4), y=np.zeros(4)), "a.npz"),
    "length mismatch": (lambda p: _npz(p, X=np.zeros((4, 2)), y=np.zeros(5)), "a.npz"),
    "1-d npy": (lambda p: np.save(p, np.arange(5.0)) or p, "a.npy"),
    "empty 2-d npy": (lambda p: np.save(p, np.zeros((0, 3))) or p, "a.npy"),
    "object npy": (lambda p: np.save(p, np.array([None, 1], dtype=object), allow_pickle=True) or p, "a.npy"),
}


@pytest.mark.parametrize("maker", list(ARRAY_MAKERS.values()), ids=list(ARRAY_MAKERS))
def test_hostile_array_content(tmp_path, maker):
    make, name = maker
    path = tmp_path / name
    make(path)
    with refused(DataLoadError, inputs=(path,), folder=tmp_path):
        load_arrays(path)


# ---------------------------------------------------------------- non-regular files and links

def _png(path: Path, size=(4, 4), color=0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("L", size, color).save(path)
    return path


def _image_folder(root: Path) -> Path:
    for cls in ("a", "b"):
        for i in range(2):
            _png(root / cls / f"{i}.png", color=40 * i)
    return root


def _fifo_image(root):
    make_fifo(root / "a" / "x.png")


def _socket_image(root):
    s = socket.socket(socket.AF_UNIX)
    path = root / "a" / "s.png"
    try:
        s.bind(str(path))
    except OSError:
        pytest.skip("cannot bind a unix socket here")
    finally:
        s.close()


def _link_out(root):
    secret = root.parent / "secret.png"
    _png(secret, color=200)
    (root / "a" / "link.png").symlink_to(secret)


def _link_dev_zero(root):
    (root / "a" / "zero.png").symlink_to("/dev/zero")


def _linked_class(root):
    outside = root.parent / "elsewhere"
    _png(outside / "1.png")
    (root / "c").symlink_to(outside, target_is_directory=True)


def _linked_subfolder(root):
    outside = root.parent / "elsewhere2"
    _png(outside / "1.png")
    (root / "a" / "sub").symlink_to(outside, target_is_directory=True)


def _text_as_png(root):
    (root / "a" / "note.png").write_text("this is not an image")


def _empty_png(root):
    (root / "b" / "e.png").write_bytes(b"")


def _truncated_png(root):
    data = (root / "a" / "0.png").read_bytes()
    (root / "a" / "t.png").write_bytes(data[: len(data) // 2])


def _one_class(root):
    for f in (root / "b").iterdir():
        f.unlink()
    (root / "b").rmdir()


def _empty_class(root):
    (root / "c").mkdir()


def _bomb_png(root):
    Image.MAX_IMAGE_PIXELS  # noqa: B018 - Pillow's own decompression-bomb limit applies
    buf = io.BytesIO()
    Image.new("1", (20000, 20000)).save(buf, "PNG")
    (root / "a" / "bomb.png").write_bytes(buf.getvalue())


FOLDERS = {
    "fifo named x.png": (_fifo_image, "named pipe"),
    "socket named s.png": (_socket_image, "socket"),
    "symlink to a file outside": (_link_out, "symbolic link"),
    "symlink to /dev/zero": (_link_dev_zero, "symbolic link"),
    "symlinked class folder": (_linked_class, "symbolic link"),
    "symlinked subfolder": (_linked_subfolder, "symbolic link"),
    "text named .png": (_text_as_png, "note.png"),
    "empty png": (_empty_png, "empty"),
    "truncated png": (_truncated_png, "t.png"),
    "one class": (_one_class, "single class"),
    "empty class": (_empty_class, "no images"),
    "decompression bomb": (_bomb_png, "bomb.png"),
}


@pytest.mark.parametrize("case", list(FOLDERS.values()), ids=list(FOLDERS))
def test_hostile_image_folder(tmp_path, case):
    spoil, phrase = case
    root = _image_folder(tmp_path / "imgs")
    spoil(root)
    with refused(DataLoadError, phrase, inputs=(root,), folder=tmp_path):
        load_image_folder(root, size=(4, 4), channels=1)


SPECIAL = {
    "fifo csv": lambda d: make_fifo(d / "t.csv"),
    "fifo npz": lambda d: make_fifo(d / "t.npz"),
    "fifo npy": lambda d: make_fifo(d / "t.npy"),
    "dev zero as npy": lambda d: (d / "z.npy").symlink_to("/dev/zero") or d / "z.npy",
    "dev null as csv": lambda d: (d / "n.csv").symlink_to("/dev/null") or d / "n.csv",
    "dev zero as csv": lambda d: (d / "z.csv").symlink_to("/dev/zero") or d / "z.csv",
    "folder named csv": lambda d: (d / "f.csv").mkdir() or d / "f.csv",
}


@pytest.mark.parametrize("make", list(SPECIAL.values()), ids=list(SPECIAL))
def test_special_files_are_refused_without_blocking(tmp_path, make):
    if not Path("/dev/zero").exists():
        pytest.skip("no /dev/zero")
    path = make(tmp_path)
    kwargs = {"target": "y"} if path.suffix == ".csv" and not path.is_dir() else {}
    with refused(DataLoadError, folder=tmp_path):
        load_dataset(path, **kwargs)


def test_symlinked_table_chosen_by_the_user_is_read(tmp_path):
    """A link the person names directly is fine (they chose it); only links inside folders are refused."""
    real = tmp_path / "real.csv"
    real.write_text("x,y\n1,2\n3,4\n")
    (tmp_path / "link.csv").symlink_to(real)
    assert len(load_table(tmp_path / "link.csv", target="y")) == 2


def test_npz_zip_bomb_member_is_a_data_error(tmp_path):
    path = tmp_path / "bomb.npz"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("X.npy", b"\x93NUMPY" + b"\x00" * (50 * 1024 * 1024))
    with refused(DataLoadError, inputs=(path,), folder=tmp_path):
        load_arrays(path)
