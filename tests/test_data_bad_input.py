"""Bad input: every broken file gives a DataLoadError that says what to do, and stays untouched."""

from __future__ import annotations

import io
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from ntk_studio.core.data import Dataset, load_arrays, load_dataset, load_image_folder, load_table
from ntk_studio.core.errors import DataLoadError, NTKStudioError

PROPERTY_SETTINGS = settings(max_examples=60, deadline=None,
                             suppress_health_check=[HealthCheck.too_slow])


def _fails(path: Path, load: Callable[[], object], *phrases: str) -> str:
    """Assert load() raises DataLoadError containing every phrase, and path's bytes are unchanged."""
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    before = {p: p.read_bytes() for p in files}
    with pytest.raises(DataLoadError) as info:
        load()
    message = str(info.value)
    for phrase in phrases:
        assert phrase.lower() in message.lower(), f"{phrase!r} not in {message!r}"
    assert isinstance(info.value, NTKStudioError)
    assert {p: p.read_bytes() for p in files} == before
    return message


def _csv(tmp_path: Path, text: str, name: str = "d.csv") -> Path:
    path = tmp_path / name
    path.write_bytes(text.encode())
    return path


# -- tables -------------------------------------------------------------------------------------

def test_empty_file(tmp_path: Path) -> None:
    for name in ("e.csv", "e.npz", "e.npy"):
        path = _csv(tmp_path, "", name)
        _fails(path, lambda p=path: load_dataset(p, **({"target": "y"} if name.endswith("csv") else {})), "empty")


def test_wrong_extension(tmp_path: Path) -> None:
    path = _csv(tmp_path, "x,y\n1,2\n3,4\n", "d.xlsx")
    _fails(path, lambda: load_table(path, "y"), "'.xlsx'", ".csv, .tsv, .txt")
    _fails(path, lambda: load_arrays(path), ".npz, .npy")


def test_header_only(tmp_path: Path) -> None:
    path = _csv(tmp_path, "x,y\n")
    _fails(path, lambda: load_table(path, "y"), "header but no data rows", "at least 2")


def test_single_row(tmp_path: Path) -> None:
    path = _csv(tmp_path, "x,y\n1,2\n")
    _fails(path, lambda: load_table(path, "y"), "only one data row", "at least 2")


def test_missing_target_suggests_close_match(tmp_path: Path) -> None:
    path = _csv(tmp_path, "sqft,bedrooms,price\n1,2,3\n4,5,6\n")
    _fails(path, lambda: load_table(path, "prise"), "'prise'", "did you mean 'price'", "available", "'sqft'")
    _fails(path, lambda: load_table(path, "Price"), "did you mean 'price'")


def test_no_header_row_is_explained(tmp_path: Path) -> None:
    path = _csv(tmp_path, "1,2,3\n4,5,6\n7,8,9\n")
    _fails(path, lambda: load_table(path, "y"), "needs a header row")


def test_wrong_delimiter_is_explained(tmp_path: Path) -> None:
    path = _csv(tmp_path, "x|y\n1|2\n3|4\n", "d.tsv")
    _fails(path, lambda: load_table(path, "y"), "delimiter='|'")


def test_non_numeric_column_suggests_one_hot(tmp_path: Path) -> None:
    path = _csv(tmp_path, "size,colour,shape,y\n1,red,round,1\n2,blue,square,2\n3,red,round,3\n")
    _fails(path, lambda: load_table(path, "y"), "'colour'", "'shape'", "not numeric", "one_hot=True", "--one-hot")


def test_text_target_suggests_classification(tmp_path: Path) -> None:
    path = _csv(tmp_path, "x,label\n1,cat\n2,dog\n3,cat\n")
    _fails(path, lambda: load_table(path, "label"), "classification=True")


def test_typo_in_numeric_column_names_the_line(tmp_path: Path) -> None:
    path = _csv(tmp_path, "x,y\n1,2\n3,4\n5..5,6\n7,8\n")
    _fails(path, lambda: load_table(path, "y"), "'x'", "line 4", "'5..5'")


def test_missing_values_name_column_count_and_lines(tmp_path: Path) -> None:
    path = _csv(tmp_path, "x,z,y\n1,,2\n3,NA,4\n5,nan,6\n7,8,9\n")
    _fails(path, lambda: load_table(path, "y"), "'z'", "3 empty or missing", "lines 2, 3, 4")


def test_infinite_values_give_line_numbers(tmp_path: Path) -> None:
    path = _csv(tmp_path, "x,y\n1,2\ninf,4\n5,6\n-1e999,8\n")
    _fails(path, lambda: load_table(path, "y"), "'x'", "nan or infinite", "lines 3, 5")


def test_ragged_rows_and_header_problems(tmp_path: Path) -> None:
    ragged = _csv(tmp_path, "x,y\n1,2\n3,4,5\n6,7\n", "r.csv")
    _fails(ragged, lambda: load_table(ragged, "y"), "header has 2 fields", "line 3 has 3")
    dup = _csv(tmp_path, "x,x,y\n1,2,3\n4,5,6\n", "dup.csv")
    _fails(dup, lambda: load_table(dup, "y"), "'x' more than once")
    unnamed = _csv(tmp_path, ",x,y\n0,1,2\n1,3,4\n", "idx.csv")
    _fails(unnamed, lambda: load_table(unnamed, "y"), "column(s) 1 have no name", "index=False")


def test_target_as_feature_and_one_class(tmp_path: Path) -> None:
    path = _csv(tmp_path, "x,y\n1,a\n2,a\n")
    _fails(path, lambda: load_table(path, "y", features=["x", "y"]), "both a feature and the target")
    _fails(path, lambda: load_table(path, "y", classification=True), "only one class")


def test_binary_garbage_and_non_utf8(tmp_path: Path) -> None:
    garbage = tmp_path / "g.csv"
    garbage.write_bytes(bytes(range(256)) * 4)
    _fails(garbage, lambda: load_table(garbage, "y"), "binary")
    latin = tmp_path / "l.csv"
    latin.write_bytes("prix,café\n1,2\n3,4\n".encode("latin-1"))
    _fails(latin, lambda: load_table(latin, "prix"), "not UTF-8", "CSV UTF-8")


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(DataLoadError, match="No such file"):
        load_table(tmp_path / "nope.csv", "y")


# -- arrays -------------------------------------------------------------------------------------

def test_npz_missing_keys_are_listed(tmp_path: Path) -> None:
    path = tmp_path / "d.npz"
    np.savez(path, x=np.ones((3, 2)), Y=np.ones(3))
    _fails(path, lambda: load_arrays(path), "feature key 'X'", "did you mean 'x'", "'Y'", "feature_key=")
    _fails(path, lambda: load_arrays(path, feature_key="x"), "target key 'y'", "did you mean 'Y'")


def test_object_arrays_are_refused(tmp_path: Path) -> None:
    npy = tmp_path / "o.npy"
    np.save(npy, np.array([[1, "a"], [2, "b"]], dtype=object), allow_pickle=True)
    _fails(npy, lambda: load_arrays(npy), "object (pickled) array", "numeric")
    npz = tmp_path / "o.npz"
    np.savez(npz, X=np.array([[1.0], [2.0]], dtype=object), y=np.ones(2))
    _fails(npz, lambda: load_arrays(npz), "'X'", "object (pickled) array")


def test_array_shapes_and_values(tmp_path: Path) -> None:
    flat = tmp_path / "flat.npy"
    np.save(flat, np.arange(5.0))
    _fails(flat, lambda: load_arrays(flat), "shape (5,)", "must be 2-D", "last being the target")
    one_row = tmp_path / "one.npy"
    np.save(one_row, np.ones((1, 3)))
    _fails(one_row, lambda: load_arrays(one_row), "at least 2")
    mismatch = tmp_path / "m.npz"
    np.savez(mismatch, X=np.ones((4, 2)), y=np.ones(3))
    _fails(mismatch, lambda: load_arrays(mismatch), "4 rows", "has 3")
    vector = tmp_path / "v.npz"
    np.savez(vector, X=np.ones(4), y=np.ones(4))
    _fails(vector, lambda: load_arrays(vector), "reshape(-1, 1)")
    nan = tmp_path / "nan.npz"
    X = np.ones((6, 2))
    X[2, 1], X[4, 0] = np.nan, np.inf
    np.savez(nan, X=X, y=np.ones(6))
    _fails(nan, lambda: load_arrays(nan), "nan or infinite", "row index 2, 4")
    text = tmp_path / "s.npz"
    np.savez(text, X=np.array([["a"], ["b"]]), y=np.ones(2))
    _fails(text, lambda: load_arrays(text), "not numbers")


def test_truncated_and_fake_array_files(tmp_path: Path) -> None:
    buf = io.BytesIO()
    np.save(buf, np.ones((100, 3)))
    short = tmp_path / "short.npy"
    short.write_bytes(buf.getvalue()[:300])
    _fails(short, lambda: load_arrays(short), "truncated")
    fake = tmp_path / "fake.npz"
    fake.write_bytes(b"this is not a zip")
    _fails(fake, lambda: load_arrays(fake), "not a NumPy .npz")


# -- image folders ------------------------------------------------------------------------------

def _image(path: Path, hw: tuple[int, int], fmt: str | None = None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((*hw, 3), 90, dtype=np.uint8)).save(path, format=fmt)


def test_mixed_image_sizes_name_two_files(tmp_path: Path) -> None:
    _image(tmp_path / "cat" / "a.png", (8, 8))
    _image(tmp_path / "cat" / "b.png", (8, 8))
    _image(tmp_path / "dog" / "c.jpg", (10, 12))
    _fails(tmp_path, lambda: load_image_folder(tmp_path), "cat/a.png", "(8, 8)", "dog/c.jpg", "(10, 12)",
           "size=(H, W)", "size=(8, 8)")


def test_corrupt_image_is_named(tmp_path: Path) -> None:
    _image(tmp_path / "cat" / "a.png", (8, 8))
    _image(tmp_path / "dog" / "b.png", (8, 8))
    (tmp_path / "dog" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 definitely not a jpeg")
    _fails(tmp_path, lambda: load_image_folder(tmp_path), "dog/broken.jpg", "damaged")
    good = (tmp_path / "dog" / "b.png").read_bytes()
    (tmp_path / "dog" / "broken.jpg").write_bytes(good[: len(good) // 2])  # truncated PNG data
    _fails(tmp_path, lambda: load_image_folder(tmp_path), "dog/broken.jpg")


def test_empty_class_folder_and_layout_errors(tmp_path: Path) -> None:
    _image(tmp_path / "cat" / "a.png", (8, 8))
    (tmp_path / "dog").mkdir()
    (tmp_path / "dog" / "readme.txt").write_text("no images here")
    _fails(tmp_path, lambda: load_image_folder(tmp_path), "'dog'", "contain no images", ".png")
    loose = tmp_path / "loose"
    _image(loose / "a.png", (8, 8))
    _fails(loose, lambda: load_image_folder(loose), "no class subfolders", "own subfolder")
    single = tmp_path / "single"
    _image(single / "cat" / "a.png", (8, 8))
    _fails(single, lambda: load_image_folder(single), "single class subfolder")
    empty = tmp_path / "empty"
    empty.mkdir()
    _fails(empty, lambda: load_image_folder(empty), "no class subfolders")
    _fails(empty, lambda: load_image_folder(empty / "nope"), "No such folder")
    _fails(empty, lambda: load_image_folder(tmp_path / "cat" / "a.png"), "not a folder")
    _fails(empty, lambda: load_image_folder(tmp_path, size=(0, 4)), "positive")
    _fails(empty, lambda: load_image_folder(tmp_path, channels=4), "channels")


# -- properties ---------------------------------------------------------------------------------

def _check_valid(ds: Dataset) -> None:
    assert len(ds) >= 2 and ds.X.shape[0] == ds.y.shape[0]
    assert bool(ds.X.isfinite().all()) and bool(ds.y.isfinite().all())
    if ds.X.ndim == 2:
        assert ds.X.shape[1] == len(ds.feature_names)


def _valid_npz() -> bytes:
    buf = io.BytesIO()
    np.savez(buf, X=np.arange(6.0).reshape(3, 2), y=np.arange(3.0))
    return buf.getvalue()


def _valid_npy() -> bytes:
    buf = io.BytesIO()
    np.save(buf, np.arange(6.0).reshape(3, 2))
    return buf.getvalue()


@st.composite
def _damaged(draw, original: bytes) -> bytes:
    """A valid file with a few bytes overwritten and maybe truncated: reaches the deep parsers."""
    data = bytearray(original)
    for _ in range(draw(st.integers(1, 8))):
        data[draw(st.integers(0, len(data) - 1))] = draw(st.integers(0, 255))
    return bytes(data[: draw(st.integers(1, len(data)))])


@PROPERTY_SETTINGS
@given(suffix=st.sampled_from([".csv", ".tsv", ".npz", ".npy"]),
       data=st.one_of(st.binary(max_size=400), _damaged(_valid_npz()), _damaged(_valid_npy()),
                      st.binary(max_size=200).map(lambda b: b"\x93NUMPY" + b)))
def test_random_bytes_give_dataloaderror_or_a_dataset(suffix: str, data: bytes) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"f{suffix}"
        path.write_bytes(data)
        try:
            ds = load_dataset(path, **({"target": "y"} if suffix in (".csv", ".tsv") else {}))
        except DataLoadError:
            assert path.read_bytes() == data
            return
        _check_valid(ds)


_CELL = st.one_of(st.floats(allow_nan=True, allow_infinity=True).map(repr), st.integers(-5, 5).map(str),
                  st.sampled_from(["", "NA", "nan", "red", "blue", " 3 ", '"q,uoted"', "1e999"]),
                  st.text(alphabet="ab,;\t\"\n 1.", max_size=4))


@PROPERTY_SETTINGS
@given(n_cols=st.integers(1, 4), data=st.data(), delimiter=st.sampled_from([",", "\t", ";"]),
       one_hot=st.booleans(), classification=st.booleans())
def test_random_csv_shapes_give_dataloaderror_or_a_clean_dataset(
    n_cols: int, data, delimiter: str, one_hot: bool, classification: bool
) -> None:
    header = data.draw(st.lists(st.sampled_from(["a", "b", "y", "c d", "", "y"]), min_size=n_cols, max_size=n_cols))
    rows = data.draw(st.lists(st.lists(_CELL, min_size=n_cols, max_size=n_cols), max_size=6))
    target = data.draw(st.sampled_from(["y", "a", "missing"]))
    text = "\n".join(delimiter.join(r) for r in [header, *rows])
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "t.csv"
        path.write_bytes(text.encode())
        try:
            ds = load_table(path, target, one_hot=one_hot, classification=classification)
        except DataLoadError:
            assert path.read_bytes() == text.encode()
            return
        _check_valid(ds)
        assert not bool(ds.X.isnan().any())
        assert ds.is_classification == classification
