"""Reproducibly pretrain the rotation CNN shipped as ``weights/rotation_cnn.safetensors``.

Every step draws a minibatch of source faces (``SOURCE_FACES``), mirrors half of them left-right
(a mirrored face is another plausible face; the angle is applied after, so the label is unchanged),
rotates each by an angle uniform in ±``SOURCE_MAX_ANGLE`` and regresses the angle. The network is
trained in units of ``SOURCE_MAX_ANGLE``; its head is then scaled so the shipped model outputs degrees.

After a run, put the printed SHA-256 into ``rotation.WEIGHTS_SHA256`` (the loader refuses any other file).

Run: ``python -m ntk_studio.core.examples.train_rotation [--out PATH] [--steps N] [--seed S]``
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn

from ntk_studio.core.examples._training import deterministic, training_parser, write_weights
from ntk_studio.core.examples.rotation import (
    SOURCE_FACES,
    SOURCE_MAX_ANGLE,
    TARGET_FACES,
    WEIGHTS_PATH,
    build_rotation_cnn,
    load_faces,
    rotate,
)

DEFAULT_STEPS = 3000
DEFAULT_SEED = 0
BATCH_SIZE = 128
LEARNING_RATE = 3e-3
FINAL_LEARNING_RATE = 1e-5  # cosine decay to this floor: converged, not early-stopped
EVAL_ANGLES = 20  # per face, for the reported RMSEs
# Extra seed offset so the data stream is not the same random stream as the weight init.
DATA_SEED_OFFSET = 1_000_003
METADATA_KEY = "training"


def _batch(faces: torch.Tensor, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Return a (BATCH_SIZE, 1, 25, 25) minibatch of rotated source faces and its angles in degrees."""
    index = torch.tensor(SOURCE_FACES)[torch.randint(len(SOURCE_FACES), (BATCH_SIZE,), generator=generator)]
    picked = faces[index]
    mirror = torch.rand(BATCH_SIZE, generator=generator) < 0.5
    picked = torch.where(mirror[:, None, None], picked.flip(-1), picked)
    angles = (2 * torch.rand(BATCH_SIZE, generator=generator, dtype=torch.float64) - 1) * SOURCE_MAX_ANGLE
    return rotate(picked, angles), angles


@torch.no_grad()
def rmse(model: nn.Module, faces: torch.Tensor, rows: Sequence[int], max_angle: float, seed: int) -> float:
    """Return the model's RMSE (degrees, model outputs in degrees) on ``rows`` at EVAL_ANGLES seeded angles each."""
    generator = torch.Generator().manual_seed(seed)
    index = torch.tensor(list(rows)).repeat_interleave(EVAL_ANGLES)
    angles = (2 * torch.rand(len(index), generator=generator, dtype=torch.float64) - 1) * max_angle
    pred = model(rotate(faces[index], angles))[:, 0].double()
    return float((pred - angles).pow(2).mean().sqrt())


def train(steps: int = DEFAULT_STEPS, seed: int = DEFAULT_SEED) -> tuple[nn.Sequential, dict]:
    """Return the pretrained CNN (outputs in degrees, eval mode) and a metrics dict."""
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    faces = load_faces()
    with deterministic(seed):
        model = build_rotation_cnn()
        optimizer = torch.optim.Adam(model.parameters(), lr=LEARNING_RATE)
        schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=steps, eta_min=FINAL_LEARNING_RATE)
        generator = torch.Generator().manual_seed(seed + DATA_SEED_OFFSET)
        for _ in range(steps):
            x, angles = _batch(faces, generator)
            loss = (model(x)[:, 0] - (angles / SOURCE_MAX_ANGLE).float()).pow(2).mean()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
        with torch.no_grad():  # outputs in degrees from now on
            model.head.weight.mul_(SOURCE_MAX_ANGLE)
            model.head.bias.mul_(SOURCE_MAX_ANGLE)
        model.eval()
        metrics = {
            "seed": seed, "steps": steps, "final_loss": loss.item(),
            "source_rmse_deg": rmse(model, faces, SOURCE_FACES, SOURCE_MAX_ANGLE, seed),
            "target_people_source_angles_rmse_deg": rmse(model, faces, TARGET_FACES, SOURCE_MAX_ANGLE, seed),
            "target_people_wide_angles_rmse_deg": rmse(model, faces, TARGET_FACES, 2 * SOURCE_MAX_ANGLE, seed),
        }
    return model, metrics


def save_weights(model: nn.Sequential, metrics: dict, out: Path) -> str:
    """Write ``model``'s float32 state dict and training metadata to ``out``; return the file's SHA-256."""
    # One key: safetensors writes several metadata keys in hash order, which would change the file's bytes (and
    # SHA-256) from run to run; one sorted JSON string keeps the same training giving the same file.
    metadata = {METADATA_KEY: json.dumps(metrics, sort_keys=True)}
    write_weights(model, metadata, out)
    return hashlib.sha256(out.read_bytes()).hexdigest()


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = training_parser(__doc__.splitlines()[0], DEFAULT_STEPS, DEFAULT_SEED)
    parser.add_argument("--out", type=Path, default=WEIGHTS_PATH, help="output .safetensors path")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    """Train, save and report (RMSEs and the file's SHA-256); return 0."""
    args = _parse_args(argv)
    start = time.perf_counter()
    model, metrics = train(steps=args.steps, seed=args.seed)
    elapsed = time.perf_counter() - start
    digest = save_weights(model, metrics, args.out)
    print(f"RMSE (degrees): source faces ±{SOURCE_MAX_ANGLE:g}° {metrics['source_rmse_deg']:.2f}, "
          f"target faces ±{SOURCE_MAX_ANGLE:g}° {metrics['target_people_source_angles_rmse_deg']:.2f}, "
          f"target faces ±{2 * SOURCE_MAX_ANGLE:g}° {metrics['target_people_wide_angles_rmse_deg']:.2f}")
    print(f"trained {args.steps} steps (seed {args.seed}) in {elapsed:.1f} s -> {args.out}")
    print(f"sha256 {digest}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
