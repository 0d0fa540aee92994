"""Loading real data: the same numbers through every format, one-hot, classes, images, dispatch."""

from __future__ import annotations

import csv
import hashlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from ntk_studio.core.data import Dataset, load_arrays, load_dataset, load_image_folder, load_table
from ntk_studio.core.errors import DataLoadError

RNG = np.random.default_rng(0)
# Awkward values on purpose: full-precision floats, negatives, tiny and huge magnitudes.
NUMBERS = np.column_stack([RNG.normal(size=7), RNG.uniform(-1e6, 1e6, 7), RNG.normal(size=7) * 1e-9,
                           RNG.normal(size=7)])
FEATURES = ["a", "b", "c"]


def _write_table(path: Path, delimiter: str, numbers: np.ndarray = NUMBERS) -> Path:
    with path.open("w", newline="") as fh:
        writer = csv.writer(fh, delimiter=delimiter)
        writer.writerow([*FEATURES, "y"])
        writer.writerows([[repr(float(v)) for v in row] for row in numbers])
    return path


@pytest.fixture
def same_numbers(tmp_path: Path) -> dict[str, Dataset]:
    np.savez(tmp_path / "d.npz", X=NUMBERS[:, :3], y=NUMBERS[:, 3])
    np.save(tmp_path / "d.npy", NUMBERS)
    np.savetxt(tmp_path / "d.txt", NUMBERS, fmt="%.17g", header=" ".join([*FEATURES, "y"]), comments="")
    return {
        "csv": load_table(_write_table(tmp_path / "d.csv", ","), "y"),
        "tsv": load_table(_write_table(tmp_path / "d.tsv", "\t"), "y"),
        "semicolon csv": load_table(_write_table(tmp_path / "semi.csv", ";"), "y"),
        "space txt": load_table(tmp_path / "d.txt", "y"),
        "npz": load_arrays(tmp_path / "d.npz"),
        "npy": load_arrays(tmp_path / "d.npy"),
    }


def test_every_format_loads_the_same_numbers(same_numbers: dict[str, Dataset]) -> None:
    expected_X = torch.from_numpy(NUMBERS[:, :3])
    expected_y = torch.from_numpy(NUMBERS[:, 3])
    for name, ds in same_numbers.items():
        assert ds.X.dtype == torch.float64 and ds.y.dtype == torch.float64, name
        assert torch.equal(ds.X, expected_X), name
        assert torch.equal(ds.y, expected_y), name
        assert len(ds) == len(NUMBERS) and not ds.is_classification, name
    assert same_numbers["csv"].feature_names == tuple(FEATURES)
    assert same_numbers["csv"].target_name == "y"
    assert any("last column" in n for n in same_numbers["npy"].notes)


def test_provenance_is_path_and_sha256_of_the_bytes(tmp_path: Path) -> None:
    path = _write_table(tmp_path / "d.csv", ",")
    ds = load_table(path, "y")
    assert ds.source == str(path)
    assert ds.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()


def test_features_subset_group_column_and_multi_target(tmp_path: Path) -> None:
    path = tmp_path / "g.csv"
    path.write_text("year,x1,x2,y1,y2\n1978,1,2,3,4\n1981,5,6,7,8\n1978,9,10,11,12\n")
    ds = load_table(path, ["y1", "y2"], group_column="year")
    assert ds.feature_names == ("x1", "x2")  # group column excluded by default
    assert ds.y.shape == (3, 2) and ds.target_name == "y1,y2"
    assert list(ds.groups) == ["1978", "1981", "1978"]
    only = load_table(path, "y1", features=["x2", "year"])
    assert only.feature_names == ("x2", "year")
    assert torch.equal(only.X[:, 1], torch.tensor([1978.0, 1981.0, 1978.0], dtype=torch.float64))
    assert only.y.shape == (3,)


def test_one_hot_encoding_values(tmp_path: Path) -> None:
    path = tmp_path / "cat.csv"
    path.write_text("size,colour,y\n1.5,red,1\n2.5,blue,2\n3.5,red,3\n4.5,green,4\n")
    ds = load_table(path, "y", one_hot=True)
    assert ds.feature_names == ("size", "colour=blue", "colour=green", "colour=red")
    expected = [[1.5, 0, 0, 1], [2.5, 1, 0, 0], [3.5, 0, 0, 1], [4.5, 0, 1, 0]]
    assert torch.equal(ds.X, torch.tensor(expected, dtype=torch.float64))
    assert any("one-hot" in n for n in ds.notes)


def test_classification_targets_become_sorted_class_indices(tmp_path: Path) -> None:
    path = tmp_path / "iris.csv"
    path.write_text("x,species\n1,virginica\n2,setosa\n3,versicolor\n4,setosa\n")
    ds = load_table(path, "species", classification=True)
    assert ds.class_names == ("setosa", "versicolor", "virginica")
    assert ds.y.dtype == torch.int64 and ds.y.tolist() == [2, 0, 1, 0]
    numeric = tmp_path / "digits.csv"
    numeric.write_text("x,label\n" + "".join(f"{i},{i % 11}\n" for i in range(22)))
    digits = load_table(numeric, "label", classification=True)
    # Integer labels keep index == label (plain string sorting would put "10" before "2").
    assert digits.y.tolist() == [i % 11 for i in range(22)]


def test_npz_custom_keys_and_classification(tmp_path: Path) -> None:
    path = tmp_path / "k.npz"
    np.savez(path, inputs=np.arange(12.0).reshape(6, 2), labels=np.array([3, 1, 3, 1, 7, 7]))
    ds = load_arrays(path, target_key="labels", feature_key="inputs", classification=True)
    assert ds.class_names == ("1", "3", "7") and ds.y.tolist() == [1, 0, 1, 0, 2, 2]
    assert ds.feature_names == ("inputs0", "inputs1")
    images = tmp_path / "img.npz"
    np.savez(images, X=np.zeros((4, 3, 5, 5), dtype=np.uint8), y=np.arange(4.0))
    img = load_arrays(images)
    assert img.X.dtype == torch.float32 and img.X.shape == (4, 3, 5, 5)


def test_csv_quirks_bom_crlf_quotes_blank_lines_trailing_delimiter(tmp_path: Path) -> None:
    path = tmp_path / "excel.csv"
    path.write_bytes(b'\xef\xbb\xbf"x 1","y"\r\n"1","2"\r\n\r\n3,4\r\n')
    ds = load_table(path, "y")
    assert ds.feature_names == ("x 1",) and ds.y.tolist() == [2.0, 4.0]
    trailing = tmp_path / "trail.csv"
    trailing.write_text("x,y,\n1,2,\n3,4,\n")
    assert load_table(trailing, "y").X.tolist() == [[1.0], [3.0]]
    utf16 = tmp_path / "unicode.txt"
    utf16.write_bytes("x\ty\n1\t2\n3\t4\n".encode("utf-16"))
    assert load_table(utf16, "y").y.tolist() == [2.0, 4.0]


def _png(path: Path, rgb: tuple[int, int, int], hw: tuple[int, int], pixel=None, mode="RGB") -> None:
    arr = np.zeros((*hw, 3), dtype=np.uint8)
    arr[:] = rgb
    if pixel is not None:
        (r, c), value = pixel
        arr[r, c] = value
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).convert(mode).save(path)


def test_image_folder_png_and_jpeg_resized(tmp_path: Path) -> None:
    _png(tmp_path / "cat" / "a.png", (200, 100, 50), (4, 6), pixel=((1, 2), (10, 20, 30)))
    _png(tmp_path / "cat" / "b.PNG", (0, 0, 0), (4, 6))
    _png(tmp_path / "dog" / "c.jpg", (40, 160, 240), (16, 16))  # other size: resized
    (tmp_path / "dog" / "notes.txt").write_text("not an image")
    ds = load_image_folder(tmp_path, size=(4, 6))
    assert ds.X.shape == (3, 3, 4, 6) and ds.X.dtype == torch.float32
    assert ds.class_names == ("cat", "dog") and ds.y.tolist() == [0, 0, 1] and ds.y.dtype == torch.int64
    assert ds.feature_names == ("R", "G", "B")
    # PNG is lossless and already 4 x 6: the marked pixel comes back exactly.
    assert torch.equal(ds.X[0, :, 1, 2], torch.tensor([10, 20, 30], dtype=torch.float32) / 255)
    assert torch.equal(ds.X[0, :, 0, 0], torch.tensor([200, 100, 50], dtype=torch.float32) / 255)
    # JPEG is lossy; a flat colour survives decoding and resizing to within a few levels.
    assert torch.allclose(ds.X[2, :, 2, 3], torch.tensor([40, 160, 240]) / 255, atol=4 / 255)
    assert float(ds.X.min()) >= 0.0 and float(ds.X.max()) <= 1.0
    assert any("non-image" in n for n in ds.notes)
    assert load_dataset(tmp_path, size=(4, 6)).sha256 == ds.sha256


def test_image_folder_grayscale_same_size_and_awkward_modes(tmp_path: Path) -> None:
    _png(tmp_path / "a" / "rgb.png", (255, 255, 255), (3, 5))
    _png(tmp_path / "a" / "palette.gif", (0, 0, 0), (3, 5), mode="P")
    Image.fromarray(np.full((3, 5), 65535, dtype=np.uint16)).save(tmp_path / "a" / "deep.png")
    rgba = np.zeros((3, 5, 4), dtype=np.uint8)
    rgba[..., 3] = 128
    (tmp_path / "b").mkdir()
    Image.fromarray(rgba).save(tmp_path / "b" / "alpha.png")
    ds = load_image_folder(tmp_path, channels=1)
    assert ds.X.shape == (4, 1, 3, 5) and ds.feature_names == ("L",)
    # Sorted by file name within a class: deep.png, palette.gif, rgb.png.
    assert ds.X[0].eq(1.0).all() and ds.X[1].eq(0.0).all() and ds.X[2].eq(1.0).all()


def test_load_dataset_dispatches_and_checks_options(tmp_path: Path) -> None:
    csv_path = _write_table(tmp_path / "d.csv", ",")
    np.savez(tmp_path / "d.npz", X=NUMBERS[:, :3], y=NUMBERS[:, 3])
    assert torch.equal(load_dataset(csv_path, target="y").X, load_dataset(tmp_path / "d.npz").X)
    with pytest.raises(DataLoadError, match="needs target"):
        load_dataset(csv_path)
    with pytest.raises(DataLoadError, match="one_hot.*do not apply"):
        load_dataset(tmp_path / "d.npz", one_hot=True)
    (tmp_path / "d.xlsx").write_bytes(b"PK\x03\x04")
    with pytest.raises(DataLoadError, match=r"not a supported dataset format.*\.csv.*\.npz.*folder"):
        load_dataset(tmp_path / "d.xlsx")
    with pytest.raises(DataLoadError, match="No such file"):
        load_dataset(tmp_path / "missing.csv", target="y")
