"""Tests for our MobileNetV2 definition, the shipped ImageNet weights, and the faces example."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.nn import functional as F

from ntk_studio.core.errors import ModelLoadError
from ntk_studio.core.examples import mobilenet
from ntk_studio.core.examples.faces import IMAGE_SIZE, INIT_PER_CLASS
from ntk_studio.core.examples.mobilenet import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    MobileNetV2,
    load_imagenet_mobilenet_v2,
)
from ntk_studio.core.examples.registry import load_example

TORCHVISION_PARAM_COUNT = 3_504_872  # torchvision's mobilenet_v2(), width 1.0
TORCHVISION_STATE_KEYS = 314
IMAGENET_SIZE = 224
# ImageNet class indices: 281 tabby, 282 tiger cat, 283 Persian, 284 Siamese, 285 Egyptian cat.
CAT_CLASSES = set(range(281, 286))
ESPRESSO = 967
# Measured: 98.0% on all 200 images, 97.8% on the 180 not used to fit the head (chance: 50%).
MIN_FACES_ACCURACY = 0.95


@pytest.fixture(scope="module")
def imagenet_model():
    return load_imagenet_mobilenet_v2()


@pytest.fixture(scope="module")
def faces():
    """The faces example and its logits on all 200 images (one forward, shared by the tests)."""
    example = load_example("faces")
    with torch.no_grad():
        logits = example.model(example.target.X)
    return example, logits


def _imagenet_batch(*images: np.ndarray) -> torch.Tensor:
    x = torch.cat([
        F.interpolate(torch.from_numpy(img).permute(2, 0, 1)[None].float() / 255,
                      size=(IMAGENET_SIZE, IMAGENET_SIZE), mode="bilinear", antialias=True)
        for img in images
    ])
    return (x - torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)) / torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)


def test_architecture_has_torchvision_layout():
    state = MobileNetV2().state_dict()
    assert len(state) == TORCHVISION_STATE_KEYS
    assert sum(p.numel() for p in MobileNetV2().parameters()) == TORCHVISION_PARAM_COUNT
    expected = {
        "features.0.0.weight": (32, 3, 3, 3),
        "features.1.conv.0.0.weight": (32, 1, 3, 3),  # expansion 1: depthwise first
        "features.1.conv.1.weight": (16, 32, 1, 1),
        "features.2.conv.0.0.weight": (96, 16, 1, 1),  # expansion 6: 1x1 expand first
        "features.2.conv.3.running_var": (24,),
        "features.18.0.weight": (1280, 320, 1, 1),
        "classifier.1.weight": (1000, 1280),
    }
    assert {k: tuple(state[k].shape) for k in expected} == expected


def test_shipped_weights_load_strictly(imagenet_model):
    path = mobilenet.imagenet_weights_path()
    state = torch.load(path, map_location="cpu", weights_only=True)
    assert set(state) == set(MobileNetV2().state_dict())
    assert not imagenet_model.training
    torch.testing.assert_close(imagenet_model.classifier[1].weight, state["classifier.1.weight"])


def test_corrupt_weights_are_refused(monkeypatch):
    monkeypatch.setattr(mobilenet, "WEIGHTS_SHA256", "0" * 64)
    with pytest.raises(ModelLoadError, match="SHA-256"):
        load_imagenet_mobilenet_v2()


def test_imagenet_behaviour_on_real_photos(imagenet_model):
    from skimage import data

    with torch.no_grad():
        logits = imagenet_model(_imagenet_batch(data.chelsea(), data.coffee()))
    assert logits.shape == (2, 1000) and torch.isfinite(logits).all()
    probs = logits.softmax(-1)
    torch.testing.assert_close(probs.sum(-1), torch.ones(2))
    top = probs.argmax(-1).tolist()
    assert top[0] in CAT_CLASSES  # Chelsea the cat
    assert top[1] == ESPRESSO  # a cup of coffee
    assert probs[0, sorted(CAT_CLASSES)].sum() > 0.9 and probs[1, ESPRESSO] > 0.9


def test_faces_example_data(faces):
    example, _ = faces
    data = example.target
    assert example.task == "classification" and example.source is None
    assert data.X.shape == (200, 3, IMAGE_SIZE, IMAGE_SIZE) and data.X.dtype == torch.float32
    assert data.y.dtype == torch.int64
    assert data.y.tolist() == [0] * 100 + [1] * 100
    assert data.class_names == ("face", "not face")
    # Grayscale repeated to RGB: undoing each channel's normalization gives the same image.
    mean, std = torch.tensor(IMAGENET_MEAN), torch.tensor(IMAGENET_STD)
    pixels = data.X * std.view(1, 3, 1, 1) + mean.view(1, 3, 1, 1)
    torch.testing.assert_close(pixels[:, 0], pixels[:, 1], atol=1e-5, rtol=0)
    torch.testing.assert_close(pixels[:, 0], pixels[:, 2], atol=1e-5, rtol=0)
    assert pixels.min() > -1e-5 and pixels.max() < 1 + 1e-5
    init = data.groups == "head-init"
    assert init[:100].sum() == INIT_PER_CLASS and init[100:].sum() == INIT_PER_CLASS


def test_faces_model_structure(faces):
    example, logits = faces
    model = example.model
    assert not any(m.training for m in model.modules())
    assert logits.shape == (200, 2) and torch.isfinite(logits).all()
    names = [name for name, _ in model.named_parameters()]
    assert names[-2:] == ["head.weight", "head.bias"]
    assert any(name.startswith("body.features.0.") for name in names)
    assert model.head.weight.abs().max() > 0


def test_faces_head_beats_chance(faces):
    example, logits = faces
    correct = logits.argmax(-1) == example.target.y
    held_out = torch.from_numpy(example.target.groups != "head-init")
    assert correct[~held_out].all()
    assert correct.float().mean() >= MIN_FACES_ACCURACY
    assert correct[held_out].float().mean() >= MIN_FACES_ACCURACY


def test_faces_jacobian_wrt_body_does_not_vanish(faces):
    example, _ = faces
    model = example.model
    model.zero_grad(set_to_none=True)
    model(example.target.X[:1])[0, 0].backward()
    stem = model.body.features[0][0].weight.grad
    assert stem is not None and stem.abs().max() > 0
    model.zero_grad(set_to_none=True)


def test_faces_head_initialization_is_deterministic(faces):
    example, _ = faces
    again = load_example("faces")
    assert torch.equal(again.model.head.weight, example.model.head.weight)
    assert torch.equal(again.model.head.bias, example.model.head.bias)
