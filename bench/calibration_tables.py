"""Markdown tables of the calibration benchmark's JSON results (bench/calibration*.py).

    .venv/bin/python bench/calibration_tables.py bench/results/calibration_quick_*.json \
        --regression bench/results/calibration_regression_quick.json
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np

DEFAULT = "held-out (s², τ) · pairwise"  # what LinearizedClassifier.fit_hyperparameters() + predict_proba() give
SHOWN = ("unadapted", "fine-tuned", "fine-tuned ensemble (5)",
         "evidence · probit", "evidence · pairwise", "evidence · bridge", "evidence · mc", "evidence · map",
         "held-out s² · pairwise", "held-out s² · mc",
         "held-out (s², τ) · probit", DEFAULT, "held-out (s², τ) · bridge", "held-out (s², τ) · mc",
         "held-out (s², τ) · map",
         "per-module evidence · pairwise", "per-module evidence · bridge", "per-module evidence · map")


def classification_tables(paths: list[Path]) -> str:
    cases = defaultdict(list)
    for p in paths:
        for row in json.loads(p.read_text()):
            cases[(row["shift"], row["per_class"])].append(row["methods"])
    lines = []
    verdict = ["| shift | labels/class | default acc − fine-tuned acc | default NLL ≤ fine-tuned NLL | default ECE ≤ 0.05 |",
               "|---|---|---|---|---|"]
    for (shift, k), runs in sorted(cases.items()):
        lines += [f"### {shift}, {k} labels per class ({len(runs)} seed{'s' if len(runs) > 1 else ''})", "",
                  "| method | accuracy | NLL | Brier | ECE | chosen |", "|---|---|---|---|---|---|"]
        for name in SHOWN:
            if name not in runs[0]:
                continue
            m = {key: float(np.mean([r[name][key] for r in runs])) for key in ("accuracy", "nll", "brier", "ece")}
            chosen = runs[0][name].get("prior_var", "")
            if "cov_scale" in runs[0][name]:
                chosen = f"s² = {chosen:g}, τ = {runs[0][name]['cov_scale']:.2g}"
            elif isinstance(chosen, float):
                chosen = f"s² = {chosen:g}"
            elif isinstance(chosen, dict):
                chosen = ", ".join(f"{k}: {v:g}" for k, v in chosen.items())
            bold = "**" if name == DEFAULT else ""
            lines.append(f"| {bold}{name}{bold} | {m['accuracy']:.3f} | {m['nll']:.3f} | {m['brier']:.3f} | "
                         f"{m['ece']:.3f} | {chosen} |")
        lines.append("")
        d = {key: float(np.mean([r[DEFAULT][key] for r in runs])) for key in ("accuracy", "nll", "ece")}
        f = {key: float(np.mean([r["fine-tuned"][key] for r in runs])) for key in ("accuracy", "nll", "ece")}
        verdict.append(f"| {shift} | {k} | {100 * (d['accuracy'] - f['accuracy']):+.1f} points | "
                       f"{'yes' if d['nll'] <= f['nll'] else 'NO'} ({d['nll']:.3f} vs {f['nll']:.3f}) | "
                       f"{'yes' if d['ece'] <= 0.05 else 'NO'} ({d['ece']:.3f}) |")
    return "\n".join(verdict + [""] + lines)


def regression_tables(path: Path) -> str:
    data = json.loads(path.read_text())
    lines = []
    for task, table in data.items():
        lines += [f"### {task}", "", "| selection | NLL | RMSE | 50 % | 90 % | 95 % | median s² | median σ² |",
                  "|---|---|---|---|---|---|---|---|"]
        for sel, r in table.items():
            lines.append(f"| {sel} | {r['nll']:.3f} | {r['rmse']:.3f} | {r['coverage50']:.2f} | {r['coverage90']:.2f} | "
                         f"{r['coverage95']:.2f} | {r['median_prior_var']:.3g} | {r['median_noise']:.3g} |")
        lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("classification", nargs="*", type=Path)
    ap.add_argument("--regression", type=Path, default=None)
    args = ap.parse_args(argv)
    if args.classification:
        print(classification_tables(args.classification))
    if args.regression:
        print(regression_tables(args.regression))
    return 0


if __name__ == "__main__":
    sys.exit(main())
