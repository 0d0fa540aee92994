"""What the user has loaded (an example, a model file, a data file), as worker load steps. No Qt here."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

# Model file suffixes (the engine's loader decides the format from the content; this only routes a
# dropped or recent file to "model" rather than "data" without importing torch into the GUI).
MODEL_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt", ".pkl", ".ts", ".jit", ".torchscript", ".pt2", ".safetensors")
DATA_SUFFIXES = (".csv", ".tsv", ".txt", ".npz", ".npy")
PROJECT_SUFFIX = ".ntkproj"


def file_kind(path: str, is_dir: bool = False) -> str | None:
    """Return 'project', 'model' or 'data' for a path (a folder is image data), None when unknown."""
    if is_dir:
        return "data"
    lower = path.lower()
    if lower.endswith(PROJECT_SUFFIX):
        return "project"
    if lower.endswith(MODEL_SUFFIXES):
        return "model"
    if lower.endswith(DATA_SUFFIXES):
        return "data"
    return None


@dataclass
class Inputs:
    """The loaded inputs: an example, then optionally a model file and/or a data file replacing its parts."""

    example: str | None = None
    model: dict[str, Any] | None = None  # path, arch, trust_pickle, sha256
    data: dict[str, Any] | None = None  # path, target, features, task (or the old classification), sha256
    extra: dict[str, Any] = field(default_factory=dict)

    def load_steps(self) -> list[tuple[str, dict[str, Any]]]:
        """Return the worker commands that rebuild this state in a fresh worker, in order; each file load carries
        the SHA-256 of the bytes loaded before (``expected_sha256``), so a file swapped meanwhile is refused."""
        steps: list[tuple[str, dict[str, Any]]] = []
        if self.example:
            steps.append(("load_example", {"name": self.example}))
        if self.model:
            args = {k: self.model.get(k) for k in ("path", "arch", "trust_pickle")}
            steps.append(("load_model", {**args, "expected_sha256": self.model.get("sha256")}))
        if self.data:
            keys = [k for k in ("path", "target", "features", "classification", "task") if k in self.data]
            args = {k: self.data.get(k) for k in keys}
            steps.append(("load_data", {**args, "expected_sha256": self.data.get("sha256")}))
        return steps

    @property
    def title(self) -> str:
        """Return a short name for the window title."""
        parts = [self.example] if self.example else []
        for part in (self.model, self.data):
            if part:
                parts.append(part["path"].replace("\\", "/").rsplit("/", 1)[-1])
        return " + ".join(parts) or "nothing loaded"

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-ready copy."""
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Inputs:
        """Return the Inputs stored by :meth:`to_dict`."""
        return cls(example=d.get("example"), model=d.get("model"), data=d.get("data"), extra=d.get("extra") or {})
