"""Image shifts for the calibration benchmark, offline: scikit-learn's digits and printed digits.

Source domain: the 8x8 handwritten digits that ship with scikit-learn (`load_digits`, 1,797 images,
read from the installed package), upsampled to 16x16, values in [0, 1]. Half of them (seeded) train
the source CNN; the other half is the pool the shifted target domain is made from.

Shifts (three kinds):
- 'rotate': geometric, every image rotated by 45° ± 15° (bilinear, seeded angle per image).
- 'contrast': photometric, contrast to 30 % around mid-grey, Gaussian blur (σ = 1 px) and
  pixel noise (σ = 0.1).
- 'printed': a new domain, the digits 0-9 typeset with Pillow's built-in font (no file read or
  downloaded) at random size, position, stroke width and a ±10° tilt, rendered at 64x64 and
  area-downsampled to 16x16.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch.nn import functional as F

SIZE = 16
CLASSES = 10
SPLIT_SEED = 0
PRINTED_PER_CLASS = 90
SHIFTS = ("rotate", "contrast", "printed")


def digits() -> tuple[torch.Tensor, torch.Tensor]:
    """Return scikit-learn's digits as (1797, 1, 16, 16) float32 in [0, 1] and int64 labels."""
    from sklearn.datasets import load_digits

    d = load_digits()
    x = torch.from_numpy(d.images.astype(np.float32) / 16.0).unsqueeze(1)
    x = F.interpolate(x, size=(SIZE, SIZE), mode="bilinear", align_corners=False)
    return x.clamp(0, 1), torch.from_numpy(d.target).long()


def source_and_pool() -> tuple[tuple[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]:
    """Return (source images, labels), (target-pool images, labels): a seeded half/half split."""
    x, y = digits()
    perm = torch.randperm(len(y), generator=torch.Generator().manual_seed(SPLIT_SEED))
    half = len(y) // 2
    return (x[perm[:half]], y[perm[:half]]), (x[perm[half:]], y[perm[half:]])


def rotate(x: torch.Tensor, degrees: torch.Tensor) -> torch.Tensor:
    """Return each image rotated by its angle (degrees), bilinear, zero outside."""
    t = degrees * math.pi / 180
    cos, sin = torch.cos(t), torch.sin(t)
    theta = torch.stack([torch.stack([cos, -sin, torch.zeros_like(t)], -1),
                         torch.stack([sin, cos, torch.zeros_like(t)], -1)], 1)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """Return x convolved with a separable Gaussian of std `sigma` pixels."""
    r = max(1, int(math.ceil(3 * sigma)))
    k = torch.exp(-0.5 * (torch.arange(-r, r + 1, dtype=x.dtype) / sigma) ** 2)
    k = k / k.sum()
    x = F.conv2d(F.pad(x, (r, r, 0, 0), mode="replicate"), k.view(1, 1, 1, -1))
    return F.conv2d(F.pad(x, (0, 0, r, r), mode="replicate"), k.view(1, 1, -1, 1))


def printed_digits(per_class: int = PRINTED_PER_CLASS, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """Return typeset digits (per_class × 10, 1, 16, 16) in [0, 1] and their labels."""
    from PIL import Image, ImageDraw, ImageFont

    rng = np.random.default_rng(seed)
    images, labels = [], []
    for c in range(CLASSES):
        for _ in range(per_class):
            font = ImageFont.load_default(size=float(rng.uniform(34, 50)))
            im = Image.new("L", (64, 64))
            draw = ImageDraw.Draw(im)
            box = draw.textbbox((0, 0), str(c), font=font, stroke_width=int(rng.integers(1, 4)))
            w, h = box[2] - box[0], box[3] - box[1]
            xy = (32 - w / 2 - box[0] + rng.uniform(-4, 4), 32 - h / 2 - box[1] + rng.uniform(-4, 4))
            draw.text(xy, str(c), fill=255, font=font, stroke_width=int(rng.integers(1, 4)), stroke_fill=255)
            im = im.rotate(float(rng.uniform(-10, 10)), resample=Image.BILINEAR)
            images.append(np.asarray(im, dtype=np.float32) / 255.0)
            labels.append(c)
    x = torch.from_numpy(np.stack(images)).unsqueeze(1)
    return F.adaptive_avg_pool2d(x, SIZE).clamp(0, 1), torch.tensor(labels)


def shifted(name: str, pool: tuple[torch.Tensor, torch.Tensor], seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """Return the target domain `name` (see the module docstring) made from the pool."""
    x, y = pool
    g = torch.Generator().manual_seed(seed)
    if name == "rotate":
        angles = 45.0 + 15.0 * (2 * torch.rand(len(y), generator=g) - 1)
        return rotate(x, angles).clamp(0, 1), y
    if name == "contrast":
        low = 0.5 + 0.3 * (blur(x, 1.0) - 0.5)
        return (low + 0.1 * torch.randn(x.shape, generator=g)).clamp(0, 1), y
    if name == "printed":
        return printed_digits(seed=seed)
    raise ValueError(f"unknown shift {name!r}; known: {', '.join(SHIFTS)}")


def per_class_split(y: torch.Tensor, per_class: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Return (adaptation rows: `per_class` of each class, test rows: the rest), seeded."""
    g = torch.Generator().manual_seed(seed)
    take = []
    for c in range(CLASSES):
        rows = torch.nonzero(y == c).flatten()
        take.append(rows[torch.randperm(len(rows), generator=g)[:per_class]])
    adapt = torch.sort(torch.cat(take)).values
    mask = torch.ones(len(y), dtype=torch.bool)
    mask[adapt] = False
    return adapt, torch.nonzero(mask).flatten()
