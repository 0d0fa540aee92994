"""Standardization and splits: exact statistics, round trips, determinism and coverage."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from ntk_studio.core.data import Dataset, Split, Standardizer, random_split, source_target_split
from ntk_studio.core.errors import DataLoadError, ShapeError


def _tabular(n: int = 50, seed: int = 0, y_cols: int | None = None) -> Dataset:
    rng = np.random.default_rng(seed)
    X = rng.normal(loc=[3.0, -200.0, 0.0, 7.5], scale=[1.0, 50.0, 1e-3, 1.0], size=(n, 4))
    X[:, 3] = 7.5  # a constant column
    y = rng.normal(10.0, 4.0, size=(n,) if y_cols is None else (n, y_cols))
    return Dataset(torch.from_numpy(X), torch.from_numpy(y), ("a", "b", "c", "const"), "y")


def test_standardized_features_have_mean_zero_and_std_one() -> None:
    ds = _tabular()
    std = Standardizer.fit(ds)
    out = std.transform(ds)
    assert out.X.dtype == torch.float64 and out.y.dtype == torch.float64
    X = out.X.numpy()
    np.testing.assert_allclose(X[:, :3].mean(axis=0), 0.0, atol=1e-12)
    np.testing.assert_allclose(X[:, :3].std(axis=0), 1.0, rtol=1e-12)
    # The constant column is centred but keeps scale 1: no division by zero, no NaN.
    assert std.x_scale[3] == 1.0 and np.all(X[:, 3] == 0.0) and std.constant == (3,)
    assert any("constant column(s) 'const'" in n for n in out.notes)
    np.testing.assert_allclose(out.y.numpy().mean(), 0.0, atol=1e-12)
    np.testing.assert_allclose(out.y.numpy().std(), 1.0, rtol=1e-12)
    assert out.feature_names == ds.feature_names and out.notes[-1].startswith("standardized X and y")
    assert torch.equal(ds.X, _tabular().X)  # the input dataset is not modified


def test_inverse_transforms_round_trip() -> None:
    for y_cols in (None, 1, 3):
        ds = _tabular(y_cols=y_cols)
        std = Standardizer.fit(ds)
        z = std.transform(ds).y
        torch.testing.assert_close(std.inverse_y_mean(z), ds.y, rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(std.inverse_y_mean(z.numpy()), ds.y.numpy(), rtol=1e-12)
    std = Standardizer.fit(_tabular())
    var = torch.tensor([0.5, 2.0], dtype=torch.float64)
    torch.testing.assert_close(std.inverse_y_var(var), var * float(std.y_scale[0]) ** 2)


def test_to_dict_from_dict_round_trip_through_json() -> None:
    for ds in (_tabular(), _tabular(y_cols=2)):
        std = Standardizer.fit(ds)
        again = Standardizer.from_dict(json.loads(json.dumps(std.to_dict())))
        assert again == std
        torch.testing.assert_close(again.transform_x(ds.X), std.transform_x(ds.X), rtol=0, atol=0)
    assert Standardizer.fit(_tabular(seed=1)) != Standardizer.fit(_tabular(seed=2))
    with pytest.raises(DataLoadError, match="malformed"):
        Standardizer.from_dict({"version": 1, "x_mean": [0.0], "x_scale": [0.0], "y_mean": None,
                                "y_scale": None, "per_channel": False})
    with pytest.raises(DataLoadError, match="malformed"):
        Standardizer.from_dict({"x_mean": [0.0]})


def test_classification_keeps_labels_and_images_standardize_per_channel() -> None:
    rng = np.random.default_rng(0)
    X = rng.uniform(size=(6, 3, 4, 5)).astype(np.float32)
    X[:, 2] = 0.25  # a constant channel
    ds = Dataset(torch.from_numpy(X), torch.tensor([0, 1, 0, 1, 1, 0]), ("R", "G", "B"), "class",
                 class_names=("cat", "dog"))
    std = Standardizer.fit(ds)
    assert std.per_channel and std.x_mean.shape == (3,) and std.y_mean is None and std.y_scale is None
    out = std.transform(ds)
    assert out.X.dtype == torch.float32 and torch.equal(out.y, ds.y)
    per_channel = out.X.double().numpy().transpose(1, 0, 2, 3).reshape(3, -1)
    np.testing.assert_allclose(per_channel[:2].mean(axis=1), 0.0, atol=1e-6)
    np.testing.assert_allclose(per_channel[:2].std(axis=1), 1.0, rtol=1e-5)
    assert np.all(per_channel[2] == 0.0) and std.constant == (2,)
    assert Standardizer.from_dict(json.loads(json.dumps(std.to_dict()))) == std
    mean = torch.zeros(4, 2)
    assert std.inverse_y_mean(mean) is mean  # nothing to undo for class scores


def test_transform_rejects_data_of_another_shape() -> None:
    std = Standardizer.fit(_tabular())
    with pytest.raises(ShapeError, match="4 features"):
        std.transform_x(np.zeros((3, 5)))
    with pytest.raises(ShapeError, match="4 features"):
        std.transform_x(np.zeros((3, 4, 2, 2)))
    assert isinstance(std.transform_x(np.zeros((3, 4))), np.ndarray)


def test_random_split_is_deterministic_disjoint_and_covering() -> None:
    a, b = random_split(100, seed=7), random_split(100, seed=7)
    assert a == b and a != random_split(100, seed=8)
    assert (len(a.train), len(a.val), len(a.test)) == (70, 15, 15)
    for part in (a.train, a.val, a.test):
        assert part.dtype == np.int64 and np.all(np.diff(part) > 0)
    assert len(random_split(10, val_fraction=0.0).val) == 0


@settings(max_examples=60, deadline=None)
@given(n=st.integers(3, 500), val=st.floats(0.0, 0.45), test=st.floats(0.0, 0.45), seed=st.integers(0, 2**32))
def test_random_split_properties(n: int, val: float, test: float, seed: int) -> None:
    split = random_split(n, val, test, seed=seed)
    everything = np.concatenate([split.train, split.val, split.test])
    assert np.array_equal(np.sort(everything), np.arange(n))  # disjoint and covering
    assert len(split.train) >= 1
    assert (len(split.val) > 0) == (val > 0) and (len(split.test) > 0) == (test > 0)
    assert split == random_split(n, val, test, seed=seed)


def test_random_split_rejects_tiny_data_and_bad_fractions() -> None:
    for n in (0, 1, 2):
        with pytest.raises(DataLoadError, match="at least 3 rows"):
            random_split(n)
    assert all(len(p) == 1 for p in (random_split(3).train, random_split(3).val, random_split(3).test))
    with pytest.raises(DataLoadError, match="no training rows"):
        random_split(10, 0.5, 0.5)
    with pytest.raises(DataLoadError, match=r"\[0, 1\)"):
        random_split(10, -0.1)


def test_source_target_split_sizes_and_membership() -> None:
    groups = np.array(["1978", "1981", "1978", "1981", "1981", "1990", "1981", "1978"])
    source, split = source_target_split(groups, 1978, "1981", target_train_size=2, seed=3)
    assert source.tolist() == [0, 2, 7] and source.dtype == np.int64
    assert len(split.train) == 2 and len(split.val) == 0 and len(split.test) == 2
    assert sorted([*split.train, *split.test]) == [1, 3, 4, 6]
    again = source_target_split(groups, "1978", 1981.0, 2, seed=3)
    assert np.array_equal(again[0], source) and again[1] == split
    numeric = source_target_split(np.array([1978.0, 1981.0, 1981.0]), "1978", 1981, 1)
    assert numeric[0].tolist() == [0] and len(numeric[1].test) == 1
    ds = Dataset(torch.zeros(8, 1, dtype=torch.float64), torch.arange(8.0, dtype=torch.float64), ("x",), "y",
                 groups=groups)
    assert ds.subset(split.train).groups.tolist() == ["1981", "1981"]


def test_source_target_split_errors() -> None:
    groups = ["a", "b", "b", "b"]
    with pytest.raises(DataLoadError, match=r"'c'.*Values present: 'a', 'b'"):
        source_target_split(groups, "a", "c", 1)
    with pytest.raises(DataLoadError, match="between 1 and 2"):
        source_target_split(groups, "a", "b", 3)
    with pytest.raises(DataLoadError, match="same group"):
        source_target_split(groups, "b", "b", 1)
    with pytest.raises(DataLoadError, match="group_column"):
        source_target_split(None, "a", "b", 1)
    assert isinstance(Split(np.arange(2), np.arange(0), np.arange(1)), Split)
