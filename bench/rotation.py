"""The `rotation` example (#16): unadapted, fine-tuned, fine-tuned ensemble and linearized GP, and the GP's σ by angle.

Every method runs through core.pipeline.run with the example's defaults (ntk_studio.pipeline_defaults), the
same path as `ntk-studio-cli compare --example rotation` and the app; only the split seed changes (and the
ensemble size). Scored on every row the split does not adapt on: the rest of the labelled range and all
rows of the unlabelled tilt. RMSE in degrees, NLL of the Gaussian predictive (point predictors by the one
rule: variance = own adaptation MSE), 50/90/95 % central-interval coverage. Caches are cleared before each
seed (fresh objects), so no timed call is answered by a cache.

    .venv/bin/python bench/rotation.py                  # seeds 0 1 2, ensemble of 5, PNGs in docs/images
    .venv/bin/python bench/rotation.py --seeds 0 --ensemble 0 --params all   # the whole CNN linearized

`--selections` adds a GP row per named regression selection (core/regression_hyper.py) on the same split,
built as the pipeline builds its GP (same parameters, start values and route), e.g. "GP (blocked)";
'shift' is given the inputs of the example's unlabelled rows. The pipeline's own GP row ("linearized GP")
runs the default selection, which is 'shift' here since the pipeline passes those rows too.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

from ntk_studio.core import LinearizedGP, prefix
from ntk_studio.core.data.dataset import UNLABELLED_GROUP
from ntk_studio.core.examples import rotation as R
from ntk_studio.core.examples.registry import load_example
from ntk_studio.core.metrics_regression import regression_report
from ntk_studio.core.pipeline import initial_noise, run, split, split_rows
from ntk_studio.pipeline_defaults import settings_for

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
IMAGES = ROOT / "docs" / "images"
BIN_WIDTH = 15.0  # degrees
KEYS = ("rmse", "nll", "coverage50", "coverage90", "coverage95")
METHOD_KEYS = {"unadapted": "unadapted", "fine-tuned": "fine-tuned", "ensemble": "ensemble", "linearized": "GP"}


def _bins() -> np.ndarray:
    return np.arange(-R.TARGET_MAX_ANGLE, R.TARGET_MAX_ANGLE, BIN_WIDTH)


def by_angle(angles: np.ndarray, mean: np.ndarray, var: np.ndarray | None) -> list[dict]:
    """Return per-bin RMSE (and mean σ, 95 % coverage when a variance is given) over the angle bins."""
    rows = []
    for lo in _bins():
        sel = (angles >= lo) & (angles < lo + BIN_WIDTH) if lo + BIN_WIDTH < R.TARGET_MAX_ANGLE else angles >= lo
        err = mean[sel] - angles[sel]
        row = {"lo": float(lo), "n": int(sel.sum()), "rmse": float(np.sqrt(np.mean(err ** 2)))}
        if var is not None:
            sd = np.sqrt(var[sel])
            row |= {"sigma": float(sd.mean()), "coverage95": float(np.mean(np.abs(err) <= 1.959964 * sd))}
        rows.append(row)
    return rows


def selection_gp(example, settings, selection: str) -> tuple[np.ndarray, np.ndarray, dict]:
    """Return (mean, predictive variance, hyper_info) of the GP fitted as the pipeline fits it, by `selection`.

    'blocked:5' is the 'blocked' selection with 5 feature-space blocks.
    """
    selection, _, blocks = selection.partition(":")
    options = {"blocks": int(blocks)} if blocks else {}
    if selection == "shift":  # the inputs of the unlabelled rows: where the adapted model will be used
        options["unlabelled"] = example.target.X[np.asarray(example.target.groups) == UNLABELLED_GROUP]
    adapt, test = split(example.target, settings)
    gp = LinearizedGP(example.model, params=settings.params, prior_var=settings.prior_var,
                      noise=initial_noise(adapt, settings), space=settings.space, solver=settings.solver)
    gp.fit(adapt.X, adapt.y).fit_hyperparameters(selection=selection, **options)
    mean, var = gp.predict(test.X, include_noise=True)
    return mean.numpy().reshape(-1), var.numpy().reshape(-1), gp.hyper_info


def one_seed(example, seed: int, ensemble: int, params: str | None, selections=()) -> dict:
    """Return every method's metrics, per-angle-bin numbers and σ inside/outside the labelled range for one seed."""
    prefix.clear_cache()
    settings = settings_for("rotation").replace(seed=seed, ensemble=ensemble, params=params)
    methods = ("linearized", "fine-tuned") + (("ensemble",) if ensemble else ())
    start = time.perf_counter()
    result = run(example.model, example.target, settings, methods=methods)
    wall = time.perf_counter() - start
    adapt, test = split_rows(example.target, settings)
    angles = example.target.y[test].numpy()
    unlabelled = example.target.groups[test] == UNLABELLED_GROUP
    out = {"seed": seed, "params": settings.params, "n_adapt": len(adapt), "n_test": len(test),
           "adapt_angles": sorted(float(a) for a in example.target.y[adapt]), "wall_s": wall,
           "hyper": {k: result.hyper.get(k) for k in ("prior_var", "noise", "selection", "method")},
           "methods": {}, "bins": {}, "test_angles": angles.tolist()}
    for key, name in METHOD_KEYS.items():
        if key not in result.predictions:
            continue
        rec = result.record(key)
        pred = result.predictions[key]
        mean, var = pred["mean"].numpy().reshape(-1), pred["var"].numpy().reshape(-1)
        metrics = {k: float(rec.metrics[k]) for k in KEYS} | {"wall_s": rec.wall_time_s, "method": rec.method}
        for part, sel in (("labelled range", ~unlabelled), ("unlabelled tilt", unlabelled)):
            metrics[f"rmse {part}"] = float(np.sqrt(np.mean((mean[sel] - angles[sel]) ** 2)))
        out["methods"][name] = metrics
        out["bins"][name] = by_angle(angles, mean, var if key == "linearized" else None)
        if key == "linearized":
            sd = np.sqrt(var)
            out["sigma_inside"], out["sigma_outside"] = float(sd[~unlabelled].mean()), float(sd[unlabelled].mean())
            out["gp_sigma"], out["gp_mean"] = sd.tolist(), mean.tolist()
    for sel in selections:
        prefix.clear_cache()
        mean, var, info = selection_gp(example, settings, sel)
        name = f"GP ({sel})"
        rep = regression_report(torch.from_numpy(mean), torch.from_numpy(var), torch.from_numpy(angles))
        metrics = {k: float(rep[k]) for k in KEYS} | {"method": f"linearized GP, selection {sel}",
                                                     "cov_scale": info.get("cov_scale"),
                                                     "prior_var": info["prior_var"], "noise": info["noise"]}
        for part, rows in (("labelled range", ~unlabelled), ("unlabelled tilt", unlabelled)):
            metrics[f"rmse {part}"] = float(np.sqrt(np.mean((mean[rows] - angles[rows]) ** 2)))
            metrics[f"coverage95 {part}"] = float(np.mean(np.abs(mean[rows] - angles[rows]) <= 1.959964 * np.sqrt(var[rows])))
        out["methods"][name] = metrics
        out["bins"][name] = by_angle(angles, mean, var)
    return out


def summary_table(runs: list[dict]) -> str:
    """Return the markdown table: mean ± spread over seeds of each method's metrics."""
    extra = [n for n in runs[0]["methods"] if n not in METHOD_KEYS.values()]
    names = [n for n in [*METHOD_KEYS.values(), *extra] if all(n in r["methods"] for r in runs)]
    cols = [*KEYS, "rmse labelled range", "rmse unlabelled tilt"]
    lines = ["| method | RMSE (°) | NLL | cov 50 % | cov 90 % | cov 95 % | RMSE labelled range | RMSE unlabelled tilt |",
             "|---|---|---|---|---|---|---|---|"]
    for name in names:
        cells = []
        for c in cols:
            vals = np.array([r["methods"][name][c] for r in runs])
            fmt = "{:.2f}" if c.startswith("coverage") else "{:.1f}" if "rmse" in c else "{:.2f}"
            cells.append(fmt.format(vals.mean()) + (f" ({fmt.format(vals.min())}–{fmt.format(vals.max())})"
                                                    if len(vals) > 1 else ""))
        lines.append(f"| {runs[0]['methods'][name]['method']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def bins_table(runs: list[dict]) -> str:
    """Return the markdown table of RMSE per angle bin per method and the GP's σ and 95 % coverage, seed-averaged."""
    names = [n for n in METHOD_KEYS.values() if all(n in r["bins"] for r in runs)]
    gps = [n for n in runs[0]["bins"] if n.startswith("GP (") and all(n in r["bins"] for r in runs)]
    low, high = R.LABELLED_RANGE
    head = "| angle bin | labelled? | " + " | ".join(f"RMSE {n}" for n in names) + " | GP mean σ | GP cov 95 % |" + \
        "".join(f" {n} mean σ | {n} cov 95 % |" for n in gps)
    lines = [head, "|" + "---|" * (len(names) + 4 + 2 * len(gps))]
    for i, lo in enumerate(_bins()):
        hi = lo + BIN_WIDTH
        lab = "yes" if lo >= low and hi <= high else "no" if lo >= high or hi <= low else "part"
        cells = [f"{np.mean([r['bins'][n][i]['rmse'] for r in runs]):.1f}" for n in names]
        sigma = np.mean([r["bins"]["GP"][i]["sigma"] for r in runs])
        cov = np.mean([r["bins"]["GP"][i]["coverage95"] for r in runs])
        more = "".join(f" {np.mean([r['bins'][n][i]['sigma'] for r in runs]):.1f} | "
                       f"{np.mean([r['bins'][n][i]['coverage95'] for r in runs]):.2f} |" for n in gps)
        lines.append(f"| [{lo:g}°, {hi:g}°) | {lab} | " + " | ".join(cells) + f" | {sigma:.1f} | {cov:.2f} |" + more)
    return "\n".join(lines)


def sigma_png(runs: list[dict], path: Path) -> Path:
    """Write the figure: GP σ and |error| per test row against the angle (seed of runs[0]), and RMSE per bin."""
    os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
    import pyqtgraph as pg
    from PySide6.QtWidgets import QApplication

    app = QApplication.instance() or QApplication([])
    pg.setConfigOptions(antialias=True, background="w", foreground="k")
    win = pg.GraphicsLayoutWidget()
    win.resize(1200, 520)
    low, high = R.LABELLED_RANGE
    r0 = runs[0]
    angles, sd, mean = np.array(r0["test_angles"]), np.array(r0["gp_sigma"]), np.array(r0["gp_mean"])
    left = win.addPlot(title=f"Linearized GP on the held-out target rows (seed {r0['seed']})")
    left.addLegend(offset=(10, 10))
    left.addItem(pg.LinearRegionItem((low, high), movable=False, brush=pg.mkBrush(80, 160, 80, 40)))
    left.plot(angles, np.abs(mean - angles), pen=None, symbol="o", symbolSize=5, symbolBrush=(200, 60, 60, 150),
              symbolPen=None, name="|GP error| (°)")
    left.plot(angles, sd, pen=None, symbol="t", symbolSize=6, symbolBrush=(40, 80, 200, 200), symbolPen=None,
              name="GP predictive σ (°)")
    left.plot(r0["adapt_angles"], np.zeros(len(r0["adapt_angles"])), pen=None, symbol="|", symbolSize=14,
              symbolPen=pg.mkPen("k", width=2), name="labelled angles")
    left.setLabel("bottom", "true angle (°) — green: the labelled range")
    left.setLabel("left", "degrees")
    right = win.addPlot(title=f"RMSE per {BIN_WIDTH:g}° bin and GP σ (mean of {len(runs)} seeds)")
    right.addLegend(offset=(10, 10))
    right.addItem(pg.LinearRegionItem((low, high), movable=False, brush=pg.mkBrush(80, 160, 80, 40)))
    centres = _bins() + BIN_WIDTH / 2
    colours = {"unadapted": (120, 120, 120), "fine-tuned": (230, 140, 20), "ensemble": (160, 90, 200),
               "GP": (200, 40, 40)}
    for name, colour in colours.items():
        if all(name in r["bins"] for r in runs):
            vals = np.mean([[b["rmse"] for b in r["bins"][name]] for r in runs], axis=0)
            right.plot(centres, vals, pen=pg.mkPen(colour, width=2), symbol="o", symbolBrush=colour,
                       name=f"RMSE {name}")
    sig = np.mean([[b["sigma"] for b in r["bins"]["GP"]] for r in runs], axis=0)
    right.plot(centres, sig, pen=pg.mkPen((40, 80, 200), width=2, style=pg.QtCore.Qt.PenStyle.DashLine),
               symbol="t", symbolBrush=(40, 80, 200), name="GP mean σ")
    right.setLabel("bottom", "true angle (°)")
    right.setLabel("left", "degrees")
    app.processEvents()
    path.parent.mkdir(parents=True, exist_ok=True)
    win.grab().save(str(path), "PNG")
    return path


def people_png(path: Path) -> Path:
    """Write the contact sheet: source faces, target faces, and one face of each at -45°..45°, target in negative."""
    from PIL import Image, ImageDraw

    faces = R.load_faces()
    scale, pad, per_row = 3, 4, 20
    size = R.IMAGE_SIZE * scale

    def tile(img: torch.Tensor) -> Image.Image:
        a = img.numpy()
        a = (a - a.min()) / (a.max() - a.min() + 1e-9)
        return Image.fromarray((a * 255).astype(np.uint8)).resize((size, size), Image.NEAREST)

    angles = torch.linspace(-R.TARGET_MAX_ANGLE, R.TARGET_MAX_ANGLE, 7).double()
    src = R.rotate(faces[R.SOURCE_FACES[0]].expand(7, -1, -1), angles)[:, 0]
    tgt = R.rotate(R.negative(faces[R.TARGET_FACES[0]]).expand(7, -1, -1), angles)[:, 0]
    rows = [("source faces 0-59 (pretraining)", [faces[i] for i in R.SOURCE_FACES]),
            ("target faces 60-99 (never seen; shown before the negative)", [faces[i] for i in R.TARGET_FACES]),
            (f"face {R.SOURCE_FACES[0]} as the CNN was trained on it, -45°..45°", list(src)),
            (f"face {R.TARGET_FACES[0]} as the target shows it (negative), -45°..45°", list(tgt))]
    lines = sum((len(imgs) + per_row - 1) // per_row for _, imgs in rows)
    sheet = Image.new("L", (per_row * (size + pad) + pad, lines * (size + pad) + len(rows) * 18 + pad), 255)
    draw, y = ImageDraw.Draw(sheet), pad
    for title, imgs in rows:
        draw.text((pad, y), title, fill=0)
        y += 16
        for k, img in enumerate(imgs):
            r, c = divmod(k, per_row)
            sheet.paste(tile(img), (pad + c * (size + pad), y + r * (size + pad)))
        y += ((len(imgs) + per_row - 1) // per_row) * (size + pad) + 2
    path.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(path)
    return path


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--ensemble", type=int, default=5, help="fine-tuned ensemble members (0: none)")
    p.add_argument("--params", default=None, help="linearized/fine-tuned subset (default: the example's)")
    p.add_argument("--out", type=Path, default=RESULTS / "rotation.json")
    p.add_argument("--png", action="store_true", help="write docs/images/rotation-*.png")
    p.add_argument("--selections", nargs="*", default=["floor", "shift", "blocked", "blocked:5"],
                   help="extra GP rows, one per regression selection (core/regression_hyper.py); 'blocked:5' = 5 blocks")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    example = load_example("rotation")
    runs = []
    for seed in args.seeds:
        runs.append(one_seed(example, seed, args.ensemble, args.params, args.selections))
        r = runs[-1]
        print(f"seed {seed} ({r['wall_s']:.0f} s, {r['params']}): " + ", ".join(
            f"{n} {m['rmse']:.1f}°/{m['nll']:.2f}/{m['coverage95']:.2f}" for n, m in r["methods"].items())
            + f"; GP σ inside {r['sigma_inside']:.1f}° outside {r['sigma_outside']:.1f}°", flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    meta = {"load_average": os.getloadavg(), "cpus": os.cpu_count(), "torch_threads": torch.get_num_threads()}
    args.out.write_text(json.dumps({"meta": meta, "runs": runs}, indent=1))
    print(summary_table(runs))
    print()
    print(bins_table(runs))
    if args.png:
        print(sigma_png(runs, IMAGES / "rotation-sigma.png"))
        print(people_png(IMAGES / "rotation-people.png"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
