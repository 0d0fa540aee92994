"""The ``rotation`` example: regress a face's rotation angle, adapted to people the network never saw.

The image experiment of "Fast Adaptation with Linearized Neural Networks" (Maddox et al., 2021),
rebuilt offline from scikit-image's ``lfw_subset()`` (rows 0-99 are 25x25 grayscale faces):

- every face is rotated by an angle (bilinear ``affine_grid``/``grid_sample``) and masked to the
  inscribed disc, so the corners give no cue, then standardized per image inside the disc;
- source: ``SOURCE_FACES`` (faces 0-59) at angles in ±``SOURCE_MAX_ANGLE``; a small CNN
  (:func:`build_rotation_cnn`, trained by :mod:`train_rotation`) regresses the angle in degrees;
- target: the disjoint ``TARGET_FACES`` (faces 60-99, different images and people) in negative
  (inverted contrast, ``1 - pixel``: a photometric shift that per-image standardization does not undo)
  at angles uniform in ±``TARGET_MAX_ANGLE``. Only rows with angles in ``LABELLED_RANGE`` may be
  labelled; the rest (group ``UNLABELLED_GROUP``) are always scored, so the adapted model has to
  extrapolate to the other tilt there, and its uncertainty should grow.

The face file and the shipped weights are read once, their SHA-256 checked on the bytes parsed.
"""

from __future__ import annotations

import io
from collections import OrderedDict
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load as load_safetensors
from torch import nn
from torch.nn import functional as F

from ntk_studio.safe_io import read_regular

from ..data.dataset import UNLABELLED_GROUP, Dataset
from ..errors import DataLoadError, ModelLoadError
# registry imports this module lazily (inside its loaders), so this import is not circular.
from .registry import Example, describe, require

IMAGE_SIZE = 25
N_FACES = 100  # lfw_subset rows 0-99 are faces, 100-199 non-faces
# scikit-image 0.26's data/lfw_subset.npy, byte for byte (200 float64 25x25 images).
FACES_FILE = "lfw_subset.npy"
FACES_SHA256 = "9560ec2f5edfac01973f63a8a99d00053fecd11e21877e18038fbe500f8e872c"
FACES_MAX_BYTES = 2_000_000
# Disjoint sets of lfw_subset faces (checked by eye on docs/images/rotation-people.png: different people).
SOURCE_FACES = tuple(range(0, 60))
TARGET_FACES = tuple(range(60, 100))
SOURCE_MAX_ANGLE = 45.0  # degrees: pretraining angles are uniform in ±45°
# Degrees: target angles stay in the pretraining range. Angles beyond it (±90°) were tried: there the
# pretrained CNN outputs near 0°, and neither the GP nor fine-tuning extrapolates (docs/rotation.md).
TARGET_MAX_ANGLE = 45.0
LABELLED_RANGE = (-45.0, 15.0)  # degrees: only target rows in this range may be labelled (adapt)
TARGET_ANGLES_PER_FACE = 10
TARGET_SEED = 0
LABELLED_GROUP = "labelled range"
# Pixels: the disc is this much smaller than the inscribed one, so samples never reach the border pixels.
DISC_MARGIN = 1.0
PIXEL_STD_FLOOR = 1e-6  # a flat image is not divided by zero

WEIGHTS_FILENAME = "rotation_cnn.safetensors"
WEIGHTS_PATH = Path(__file__).resolve().parent / "weights" / WEIGHTS_FILENAME
WEIGHTS_SHA256 = "baadb5d90e8506c1cf3a1115e4a2a9c036448ee365b510ac69e9bae3d0498fc7"
WEIGHTS_MAX_BYTES = 1_000_000
CHANNELS = ("L",)  # channel names as the image-folder loader gives a grayscale image
TARGET_NAME = "angle (degrees)"


def faces_file() -> Path:
    """Return the path of scikit-image's lfw_subset.npy (the file ``skimage.data.lfw_subset`` loads)."""
    skdata = require("skimage.data", "scikit-image", "rotation")
    return Path(skdata.__file__).resolve().parent / FACES_FILE


def load_faces(verify: bool = True) -> torch.Tensor:
    """Return lfw_subset's 100 faces as float32 (100, 25, 25) in [0, 1], the file's SHA-256 checked."""
    path = faces_file()
    data = read_regular(path, DataLoadError, "scikit-image face file", limit=FACES_MAX_BYTES)
    if verify:
        digest = _sha256(data)
        if digest != FACES_SHA256:
            raise DataLoadError(
                f"{path} has SHA-256 {digest}, not scikit-image 0.26's lfw_subset.npy {FACES_SHA256}; "
                "reinstall: pip install --force-reinstall scikit-image"
            )
    images = np.load(io.BytesIO(data), allow_pickle=False)
    if images.shape != (2 * N_FACES, IMAGE_SIZE, IMAGE_SIZE):
        raise DataLoadError(f"{path} holds images of shape {images.shape}, not (200, 25, 25)")
    return torch.from_numpy(np.asarray(images[:N_FACES], dtype=np.float32))


def _sha256(data: bytes) -> str:
    import hashlib

    return hashlib.sha256(data).hexdigest()


def disc_mask(size: int = IMAGE_SIZE) -> torch.Tensor:
    """Return the (size, size) float32 mask of the pixels inside the centred disc of radius size / 2 - DISC_MARGIN."""
    centre = (size - 1) / 2
    r = torch.arange(size, dtype=torch.float32) - centre
    return ((r[:, None] ** 2 + r[None, :] ** 2) <= (size / 2 - DISC_MARGIN) ** 2).float()


def rotate(faces: torch.Tensor, angles_deg: torch.Tensor) -> torch.Tensor:
    """Return faces (n, H, W) rotated counter-clockwise by ``angles_deg`` (n,), masked, standardized: (n, 1, H, W).

    Inside the disc every image has mean 0 and standard deviation 1 (outside: 0), so neither the corners
    nor the overall brightness and contrast tell the angle.
    """
    theta = torch.deg2rad(angles_deg.to(torch.float32))
    cos, sin = torch.cos(theta), torch.sin(theta)
    zero = torch.zeros_like(cos)
    # affine_grid maps output coordinates to input ones: sampling at R(-θ) rotates the picture by +θ.
    # Image rows grow downwards, so a counter-clockwise turn on screen uses these signs.
    matrix = torch.stack([torch.stack([cos, -sin, zero], -1), torch.stack([sin, cos, zero], -1)], 1)
    x = faces.to(torch.float32).unsqueeze(1)
    grid = F.affine_grid(matrix, list(x.shape), align_corners=False)
    out = F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)
    mask = disc_mask(x.shape[-1])
    inside = mask.sum()
    mean = (out * mask).sum((2, 3), keepdim=True) / inside
    centred = (out - mean) * mask
    std = (centred.pow(2).sum((2, 3), keepdim=True) / inside).sqrt().clamp_min(PIXEL_STD_FLOOR)
    return (centred / std).contiguous()


def target_angles(seed: int = TARGET_SEED) -> torch.Tensor:
    """Return the target rows' angles (len(TARGET_FACES) * TARGET_ANGLES_PER_FACE,), uniform in ±TARGET_MAX_ANGLE."""
    generator = torch.Generator().manual_seed(seed)
    n = len(TARGET_FACES) * TARGET_ANGLES_PER_FACE
    return (2 * torch.rand(n, generator=generator, dtype=torch.float64) - 1) * TARGET_MAX_ANGLE


def build_rotation_cnn() -> nn.Sequential:
    """Return a freshly initialised float32 CNN: (n, 1, 25, 25) images -> (n, 1) angle in degrees."""
    return nn.Sequential(OrderedDict(
        conv1=nn.Conv2d(1, 16, 3, padding=1), act1=nn.ReLU(), pool1=nn.MaxPool2d(2),   # 12x12
        conv2=nn.Conv2d(16, 32, 3, padding=1), act2=nn.ReLU(), pool2=nn.MaxPool2d(2),  # 6x6
        conv3=nn.Conv2d(32, 32, 3, padding=1), act3=nn.ReLU(), pool3=nn.MaxPool2d(2),  # 3x3
        flatten=nn.Flatten(),
        fc=nn.Linear(32 * 3 * 3, 64), act4=nn.ReLU(),
        head=nn.Linear(64, 1),
    ))


def load_pretrained_rotation(path: Path = WEIGHTS_PATH, expected_sha256: str | None = WEIGHTS_SHA256) -> nn.Module:
    """Return the shipped pretrained CNN in eval mode; the bytes parsed must have ``expected_sha256``."""
    if not path.is_file():
        raise ModelLoadError(f"{path} is missing; regenerate it: python -m ntk_studio.core.examples.train_rotation")
    data = read_regular(path, ModelLoadError, "example weights file", limit=WEIGHTS_MAX_BYTES)
    if expected_sha256 is not None:
        digest = _sha256(data)
        if digest != expected_sha256:
            raise ModelLoadError(
                f"{path} has SHA-256 {digest}, not the shipped rotation CNN's {expected_sha256}; it was changed "
                "after release. Reinstall ntk-studio or regenerate it: python -m ntk_studio.core.examples.train_rotation"
            )
    model = build_rotation_cnn()
    try:
        model.load_state_dict(load_safetensors(data), strict=True)
    except (RuntimeError, ValueError) as exc:
        raise ModelLoadError(f"{path} is not the rotation CNN's state dict: {exc}") from exc
    return model.eval()


def source_dataset(faces: torch.Tensor, angles_per_face: int = TARGET_ANGLES_PER_FACE, seed: int = TARGET_SEED) -> Dataset:
    """Return the source faces at seeded angles uniform in ±SOURCE_MAX_ANGLE (for display and checks)."""
    generator = torch.Generator().manual_seed(seed + 1)
    index = torch.tensor(SOURCE_FACES).repeat_interleave(angles_per_face)
    angles = (2 * torch.rand(len(index), generator=generator, dtype=torch.float64) - 1) * SOURCE_MAX_ANGLE
    return Dataset(rotate(faces[index], angles), angles, CHANNELS, TARGET_NAME,
                   groups=np.array([f"face {i}" for i in index.tolist()]),
                   source=f"scikit-image data.lfw_subset() faces {SOURCE_FACES[0]}-{SOURCE_FACES[-1]}, "
                   f"rotated uniformly in ±{SOURCE_MAX_ANGLE:g}° (seed {seed + 1})")


def negative(faces: torch.Tensor) -> torch.Tensor:
    """Return the faces with inverted contrast (pixels in [0, 1] -> 1 - pixel): the target's photometric shift."""
    return 1.0 - faces


def target_dataset(faces: torch.Tensor, seed: int = TARGET_SEED) -> Dataset:
    """Return the target rows: TARGET_FACES in negative at seeded angles in ±TARGET_MAX_ANGLE, groups = labelled or not."""
    index = torch.tensor(TARGET_FACES).repeat_interleave(TARGET_ANGLES_PER_FACE)
    angles = target_angles(seed)
    low, high = LABELLED_RANGE
    labelled = (angles >= low) & (angles <= high)
    return Dataset(rotate(negative(faces[index]), angles), angles, CHANNELS, TARGET_NAME,
                   groups=np.where(labelled.numpy(), LABELLED_GROUP, UNLABELLED_GROUP),
                   source=f"scikit-image data.lfw_subset() faces {TARGET_FACES[0]}-{TARGET_FACES[-1]} (people the "
                   f"CNN never saw) in negative, rotated uniformly in ±{TARGET_MAX_ANGLE:g}° (seed {seed})")


def load_rotation_example() -> Example:
    """Return the ``rotation`` Example: the pretrained CNN, source faces and the shifted target faces."""
    faces = load_faces()
    model = load_pretrained_rotation()
    target = target_dataset(faces)
    n_labelled = int((target.groups == LABELLED_GROUP).sum())
    n_param = sum(p.numel() for p in model.parameters())
    notes = (
        f"Faces: scikit-image lfw_subset rows 0-99 (25x25 grayscale, SHA-256 {FACES_SHA256[:12]}… checked). "
        f"Source: faces {SOURCE_FACES[0]}-{SOURCE_FACES[-1]}; target: faces {TARGET_FACES[0]}-{TARGET_FACES[-1]}, "
        "disjoint images of other people.",
        "Each face is rotated counter-clockwise by its angle (bilinear), masked to the inscribed disc and standardized "
        "inside it (mean 0, std 1), so corners, brightness and contrast carry no angle cue. y is the angle in degrees.",
        f"Model: {n_param:,}-parameter CNN (3 conv + 2 linear layers, ReLU) pretrained on the source faces at "
        f"angles in ±{SOURCE_MAX_ANGLE:g}°; weights SHA-256 checked at load.",
        f"Target: {len(target)} rows, the target faces in negative (1 - pixel, before rotation), "
        f"{TARGET_ANGLES_PER_FACE} angles per face uniform in ±{TARGET_MAX_ANGLE:g}°. Only the {n_labelled} rows "
        f"with angles in [{LABELLED_RANGE[0]:g}°, {LABELLED_RANGE[1]:g}°] may be labelled (groups == "
        f"'{LABELLED_GROUP}'); the others (groups == '{UNLABELLED_GROUP}') are always scored: there the adapted "
        "model extrapolates to the other tilt.",
    )
    return Example(
        name="rotation", description=describe("rotation"), task="regression", model=model,
        source=source_dataset(faces), target=target, notes=notes,
    )

