"""Data shaped for the model: the task decided and explained, image channels and sizes matched."""

import numpy as np
import pytest
import torch
from torch import nn

from ntk_studio.core.data.dataset import Dataset
from ntk_studio.core.errors import ShapeError
from ntk_studio.core.pipeline_data import expected_channels, load_data_for, resolve_task, shape_images


def _table(tmp_path, labels):
    rng = np.random.default_rng(0)
    X = rng.normal(size=(len(labels), 3))
    path = tmp_path / "t.csv"
    lines = ["a,b,c,label"] + [f"{x[0]},{x[1]},{x[2]},{y}" for x, y in zip(X, labels)]
    path.write_text("\n".join(lines) + "\n")
    return path


def test_integer_csv_labels_are_classes_for_a_k_output_model(tmp_path):
    path = _table(tmp_path, [i % 3 for i in range(30)])
    torch.manual_seed(0)
    data = load_data_for(nn.Linear(3, 3), path, target="label")
    assert data.task == "classification" and data.dataset.y.dtype == torch.int64
    assert "integer labels 0…2" in data.task_reason and "3 outputs" in data.task_reason
    reg = load_data_for(nn.Linear(3, 1), path, target="label")
    assert reg.task == "regression" and "1 output" in reg.task_reason
    with pytest.raises(ShapeError, match="3 outputs but y has 1 column"):
        load_data_for(nn.Linear(3, 3), path, task="regression", target="label")


def test_text_labels_read_as_classes_and_too_few_outputs_are_refused(tmp_path):
    path = _table(tmp_path, ["cat", "dog", "eel"] * 10)
    data = load_data_for(nn.Linear(3, 3), path, target="label")
    assert data.task == "classification" and data.dataset.class_names == ("cat", "dog", "eel")
    with pytest.raises(ShapeError, match="3 classes but the model has 2 outputs"):
        load_data_for(nn.Linear(3, 2), path, target="label")


def test_real_targets_cannot_be_forced_to_classes():
    ds = Dataset(torch.randn(10, 3), torch.randn(10, dtype=torch.float64), ("a", "b", "c"), "y")
    with pytest.raises(ShapeError, match="integer labels"):
        resolve_task(nn.Linear(3, 2), ds, "classification")


def test_image_channels_and_size_are_matched():
    rgba = torch.rand(2, 4, 6, 8)
    gray, notes = shape_images(rgba, 1, None)
    luma = 0.299 * rgba[:, 0] + 0.587 * rgba[:, 1] + 0.114 * rgba[:, 2]
    assert gray.shape == (2, 1, 6, 8) and torch.allclose(gray[:, 0], luma)
    assert any("alpha" in n for n in notes) and any("grayscale" in n for n in notes)
    rgb, _ = shape_images(torch.rand(2, 6, 8), 3, (12, 16))
    assert rgb.shape == (2, 3, 12, 16) and torch.equal(rgb[:, 0], rgb[:, 2])
    with pytest.raises(ShapeError, match="expects 2 input channel"):
        shape_images(torch.rand(2, 3, 6, 8), 2, None)
    assert expected_channels(nn.Sequential(nn.Conv2d(5, 2, 3), nn.Flatten())) == 5
    assert expected_channels(nn.Linear(3, 1)) is None
