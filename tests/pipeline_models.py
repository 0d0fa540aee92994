"""A user's own 1-channel CNN in every model format, and shifted grayscale data as a PNG folder and an NPZ.

The "pretrained" CNN is built by hand (no training time): conv channel 0 detects horizontal bars,
channel 1 vertical bars, and the head says class 0 = horizontal, 1 = vertical. It is right on the
source domain. The new domain is the same scenes seen transposed (a rotated camera), so the
unadapted model gets almost every image wrong and adapting on a few labelled images must fix it.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import torch
from PIL import Image

SIZE = 12
ARCH = '''
import torch
from torch import nn


class BarNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 2, 3, padding=1)
        self.pool = nn.AvgPool2d(2)
        self.fc = nn.Linear(2 * 6 * 6, 2)

    def forward(self, x):
        return self.fc(self.pool(torch.relu(self.conv(x))).flatten(1))


def build():
    net = BarNet()
    line = torch.tensor([[-1.0, -1.0, -1.0], [2.0, 2.0, 2.0], [-1.0, -1.0, -1.0]]) / 3
    with torch.no_grad():
        net.conv.weight.copy_(torch.stack([line, line.T]).unsqueeze(1))
        net.conv.bias.zero_()
        per_channel = torch.ones(36) / 6
        net.fc.weight.copy_(torch.stack([torch.cat([per_channel, -per_channel]), torch.cat([-per_channel, per_channel])]))
        net.fc.bias.zero_()
    return net.eval()
'''


def build_model() -> torch.nn.Module:
    """Return the hand-built pretrained CNN (eval mode)."""
    ns: dict = {}
    exec(ARCH, ns)
    return ns["build"]()


def scenes(n: int, seed: int, shifted: bool) -> tuple[np.ndarray, np.ndarray]:
    """Return (X float32 (n, 1, 12, 12) in [0, 1], y int64): bars (class 0 horizontal, 1 vertical)."""
    rng = np.random.default_rng(seed)
    y = np.arange(n) % 2
    X = np.zeros((n, 1, SIZE, SIZE), dtype=np.float32)
    for i in range(n):
        pos = rng.integers(1, SIZE - 1)
        if y[i] == 0:
            X[i, 0, pos, :] = 1.0
        else:
            X[i, 0, :, pos] = 1.0
    X = np.clip(X + rng.normal(0.0, 0.1, X.shape).astype(np.float32) + 0.1, 0.0, 1.0)
    if shifted:
        X = np.ascontiguousarray(X.transpose(0, 1, 3, 2))
    # PNGs hold 8-bit pixels: quantize so the folder and the NPZ hold the same numbers.
    return (np.round(X * 255) / 255).astype(np.float32), y.astype(np.int64)


def save_formats(tmp: Path) -> dict[str, tuple[Path, str | None]]:
    """Write the model as TorchScript, state dict + factory and torch.export; return {name: (path, arch)}."""
    arch = tmp / "barnet.py"
    arch.write_text(ARCH)
    # TorchScript reads the class's source, so the model comes from the written file, not exec.
    spec = importlib.util.spec_from_file_location("barnet_user_arch", arch)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    model = module.build()
    sd = tmp / "barnet_state.pt"
    torch.save(model.state_dict(), sd)
    ts = tmp / "barnet_script.pt"
    torch.jit.script(model).save(str(ts))
    x = torch.zeros(4, 1, SIZE, SIZE)
    program = torch.export.export(model, (x,), dynamic_shapes={"x": {0: torch.export.Dim("batch")}})
    pt2 = tmp / "barnet.pt2"
    torch.export.save(program, pt2)
    return {"torchscript": (ts, None), "state_dict": (sd, f"{arch}:build"), "export": (pt2, None)}


def save_data(tmp: Path, n: int = 60, seed: int = 3) -> dict[str, Path]:
    """Write the shifted domain as a grayscale PNG folder, an NPZ (n,1,H,W) and an NPZ (n,H,W)."""
    X, y = scenes(n, seed, shifted=True)
    folder = tmp / "pngs"
    for i, (img, label) in enumerate(zip(X, y)):
        d = folder / ("horizontal" if label == 0 else "vertical")
        d.mkdir(parents=True, exist_ok=True)
        Image.fromarray((img[0] * 255).round().astype(np.uint8), mode="L").save(d / f"{i:03d}.png")
    npz = tmp / "shifted.npz"
    np.savez(npz, X=X, y=y)
    npz_hw = tmp / "shifted_hw.npz"
    np.savez(npz_hw, X=X[:, 0], y=y)
    return {"folder": folder, "npz": npz, "npz_hw": npz_hw}
