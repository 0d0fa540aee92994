"""Image folders: one subfolder per class, decoded with Pillow into float32 (n, C, H, W)."""

from __future__ import annotations

import collections
import hashlib
import io
import operator
import os
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps

from ntk_studio.safe_io import check_sha256, read_regular

from ..errors import DataLoadError
from ._common import MAX_IMAGE_FILE_BYTES, MIN_ROWS, listing
from .dataset import Dataset

SUPPORTED_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff")
CHANNEL_MODES = {1: "L", 3: "RGB"}
CHANNEL_NAMES = {1: ("L",), 3: ("R", "G", "B")}
MIN_CLASSES = 2
# 8-bit images map [0, 255] to [0, 1]; 16-bit grayscale ("I;16", "I") maps [0, 65535].
MAX_8BIT = 255.0
MAX_16BIT = 65535.0
HIGH_DEPTH_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I", "F")
# Folders that archivers and notebooks leave behind; never classes.
IGNORED_DIRS = frozenset({"__MACOSX", "__pycache__"})


def load_image_folder(path: str | Path, size: tuple[int, int] | None = None, channels: int = 3,
                      expected_sha256: str | None = None) -> Dataset:
    """Return the images under `path` (one subfolder per class) as float32 X (n, C, H, W) in [0, 1].

    `size` is (height, width), the model's input; images are resized to it (aspect ratio not
    kept). Without it all images must share one size. y holds int64 indices into the sorted
    class (subfolder) names; `sha256` hashes the sorted list of (relative path, file SHA-256).
    With `expected_sha256` (e.g. what a project recorded) every file is read and hashed first and the
    manifest compared before any image is decoded: a changed folder is a DataLoadError naming it.
    """
    if channels not in CHANNEL_MODES:
        raise DataLoadError(f"channels must be 1 (grayscale) or 3 (RGB), got {channels!r}.")
    hw = _check_size(size)
    root = Path(path)
    classes = _class_folders(root)
    files = {c: _images_in(root / c) for c in classes}
    empty = [c for c in classes if not files[c][0]]
    if empty:
        raise DataLoadError(
            f"Class folder(s) {listing(repr(c) for c in empty)} in {str(root)!r} contain no images "
            f"({' '.join(SUPPORTED_EXTENSIONS)}). Add images or remove the empty folder(s)."
        )

    # Every file is read exactly once and hashed into the manifest. With an expected hash all files are read
    # first and the manifest checked before any image is decoded; without one each is decoded as it is read.
    manifest = hashlib.sha256()

    def read_all():
        for label, c in enumerate(classes):
            for f in files[c][0]:
                rel = f.relative_to(root).as_posix()
                data = _read(f, rel)
                manifest.update(f"{rel}\0{hashlib.sha256(data).hexdigest()}\n".encode())
                yield label, rel, data

    raw = read_all()
    if expected_sha256 is not None:
        read = list(raw)[::-1]
        check_sha256(manifest.hexdigest(), expected_sha256, root, DataLoadError, "image folder")
        raw = (read.pop() for _ in range(len(read)))  # the encoded bytes are dropped as they are decoded
    arrays, labels, rels = [], [], []
    frames = 0
    for label, rel, data in raw:
        arr, multi = _decode(data, rel, CHANNEL_MODES[channels], hw)
        frames += multi
        arrays.append(arr)
        labels.append(label)
        rels.append(rel)
    if len(arrays) < MIN_ROWS:
        raise DataLoadError(f"{str(root)!r} holds {len(arrays)} image; at least {MIN_ROWS} are needed.")
    if hw is None:
        _check_same_size(arrays, rels)

    notes = [f"{len(arrays)} images in {len(classes)} classes (subfolder names)"]
    if hw is not None:
        notes.append(f"resized to (H, W) = {hw} with bilinear filtering; aspect ratio not kept")
    skipped = sum(files[c][1] for c in classes)
    if skipped:
        notes.append(f"ignored {skipped} non-image file(s)")
    if frames:
        notes.append(f"used the first frame of {frames} multi-frame image(s)")
    return Dataset(
        X=torch.from_numpy(np.stack(arrays)),
        y=torch.tensor(labels, dtype=torch.int64),
        feature_names=CHANNEL_NAMES[channels],
        target_name="class",
        class_names=tuple(classes),
        source=str(root),
        sha256=manifest.hexdigest(),
        notes=tuple(notes),
    )


def _check_size(size) -> tuple[int, int] | None:
    """Return size as (height, width) of positive ints, or None."""
    if size is None:
        return None
    try:
        h, w = (operator.index(v) for v in size)
    except (TypeError, ValueError):
        raise DataLoadError(f"size must be (height, width) as two integers, got {size!r}.") from None
    if h < 1 or w < 1 or isinstance(size[0], bool) or isinstance(size[1], bool):
        raise DataLoadError(f"size must be two positive integers (height, width), got {size!r}.")
    return h, w


def _hidden(name: str) -> bool:
    return name.startswith(".") or name in IGNORED_DIRS


def _class_folders(root: Path) -> list[str]:
    """Return the sorted class subfolder names of root, with errors for every wrong layout."""
    if not root.exists():
        raise DataLoadError(f"No such folder: {str(root)!r}. Check the path and try again.")
    if not root.is_dir():
        raise DataLoadError(
            f"{str(root)!r} is not a folder. Choose the folder that holds one subfolder per class."
        )
    try:
        entries = sorted(root.iterdir())
    except OSError as exc:
        raise DataLoadError(f"Could not list {str(root)!r} ({exc.strerror or exc}). Check permissions.") from exc
    links = [e.name for e in entries if e.is_symlink() and not _hidden(e.name)]
    if links:
        raise DataLoadError(
            f"{str(root)!r} holds symbolic link(s) {listing(repr(n) for n in links)}; an image folder must hold "
            "its class folders and images themselves (a link may point anywhere). Copy them in instead."
        )
    classes = [e.name for e in entries if e.is_dir() and not _hidden(e.name)]
    loose = [e.name for e in entries if e.is_file() and e.suffix.lower() in SUPPORTED_EXTENSIONS]
    if not classes:
        if loose:
            raise DataLoadError(
                f"{str(root)!r} holds images ({listing(loose, 3)}) but no class subfolders. Put "
                "each class's images in its own subfolder, e.g. folder/cat/1.png, folder/dog/2.png."
            )
        raise DataLoadError(
            f"{str(root)!r} has no class subfolders. An image dataset is a folder with one "
            "subfolder per class, each holding that class's images."
        )
    if len(classes) < MIN_CLASSES:
        raise DataLoadError(
            f"{str(root)!r} has a single class subfolder ({classes[0]!r}); classification needs "
            f"at least {MIN_CLASSES}. Add a subfolder per class."
        )
    return classes


def _images_in(folder: Path) -> tuple[list[Path], int]:
    """Return (sorted image files under folder, recursively; count of other files skipped)."""
    images, skipped = [], 0
    # followlinks=False: a symlink loop must not hang the loader; links are refused outright below,
    # so nothing outside the folder is ever read.
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=False):
        dirnames[:] = sorted(d for d in dirnames if not _hidden(d))
        for name in sorted(filenames + dirnames):
            entry = Path(dirpath) / name
            if not name.startswith(".") and entry.is_symlink():
                raise DataLoadError(
                    f"{str(entry)!r} is a symbolic link; an image folder must hold the images themselves "
                    "(a link may point outside it). Copy the file in instead."
                )
        for name in sorted(filenames):
            if name.startswith("."):
                continue
            if Path(name).suffix.lower() in SUPPORTED_EXTENSIONS:
                images.append(Path(dirpath) / name)
            else:
                skipped += 1
    return sorted(images), skipped


def _read(f: Path, rel: str) -> bytes:
    # Regular files only, no links, bounded: a FIFO named x.png must not hang, /dev/zero must not fill memory.
    return read_regular(f, DataLoadError, "image", MAX_IMAGE_FILE_BYTES, follow_symlinks=False)


def _decode(data: bytes, rel: str, mode: str, hw: tuple[int, int] | None) -> tuple[np.ndarray, bool]:
    """Return (float32 (C, H, W) array in [0, 1], whether the file had several frames)."""
    if not data:
        raise DataLoadError(f"Image {rel!r} is an empty file. Remove or replace it.")
    try:
        with Image.open(io.BytesIO(data)) as im:
            multi = getattr(im, "n_frames", 1) > 1
            # Phone photos store their rotation in EXIF; apply it so pixels match what people see.
            im = ImageOps.exif_transpose(im)
            if im.mode in HIGH_DEPTH_MODES:
                # Converting 16-bit images straight to "L" would clip everything above 255.
                scale = 1.0 if im.mode == "F" else MAX_16BIT
                im = im.convert("F")
                if hw is not None:
                    im = im.resize((hw[1], hw[0]), Image.Resampling.BILINEAR)
                gray = np.clip(np.asarray(im, dtype=np.float32) / scale, 0.0, 1.0)
                arr = gray[None] if mode == "L" else np.repeat(gray[None], 3, axis=0)
                return np.ascontiguousarray(arr, dtype=np.float32), multi
            if im.mode == "P" or "transparency" in im.info:
                # Palette transparency must go through RGBA, or Pillow warns and may mis-convert.
                im = im.convert("RGBA")
            im = im.convert(mode)
            if hw is not None:
                im = im.resize((hw[1], hw[0]), Image.Resampling.BILINEAR)
            pixels = np.asarray(im, dtype=np.float32) / MAX_8BIT
    except DataLoadError:
        raise
    except Exception as exc:  # noqa: BLE001 - Pillow's decoders raise many types on damaged files
        raise DataLoadError(
            f"Could not read image {rel!r} ({type(exc).__name__}: {exc}). The file is damaged or "
            "not a supported image; remove or replace it."
        ) from exc
    arr = pixels[None] if pixels.ndim == 2 else pixels.transpose(2, 0, 1)
    return np.ascontiguousarray(arr), multi


def _check_same_size(arrays: list[np.ndarray], rels: list[str]) -> None:
    """Raise naming two files of different sizes when the images do not share one size."""
    sizes = [a.shape[1:] for a in arrays]
    first = sizes[0]
    odd = next((i for i, s in enumerate(sizes) if s != first), None)
    if odd is None:
        return
    common = collections.Counter(sizes).most_common(1)[0][0]
    raise DataLoadError(
        f"Images have different sizes: {rels[0]!r} is (H, W) = {tuple(first)} but {rels[odd]!r} "
        f"is {tuple(sizes[odd])} ({len(set(sizes))} distinct sizes). Pass size=(H, W), the "
        f"model's input size, to resize them all, e.g. size={tuple(common)}."
    )
