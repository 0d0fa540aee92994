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

DEFAULT = "evidence_tau · pairwise"  # what LinearizedClassifier.fit_hyperparameters() + predict_proba() give
MAPS = ("probit", "pairwise", "bridge", "mc", "map")
FIRST = ("unadapted", "fine-tuned", "fine-tuned ensemble (5)", "evidence (grid) · pairwise", "evidence (grid) · map")
KEYS = ("accuracy", "nll", "brier", "ece")


def _cell(values: list[float]) -> str:
    return f"{np.mean(values):.3f}" if len(values) == 1 else f"{np.mean(values):.3f} ± {np.std(values, ddof=1):.3f}"


def _chosen(runs: list[dict], name: str) -> str:
    parts = []
    for r in runs:
        m = r[name]
        if "cov_scale" in m:
            parts.append(f"{m['prior_var']:.2g}, {m['cov_scale']:.2g}, {m.get('temperature', 1.0):.2g}")
        elif "prior_var" in m:
            parts.append(f"{m['prior_var']:.2g}")
    return " / ".join(parts)


def load_cases(paths: list[Path]) -> dict:
    """Return {(shift, labels per class): [methods per seed]}; a later file's (case, seed) merges into an earlier one's."""
    by_seed: dict = defaultdict(dict)
    for p in paths:
        for row in json.loads(p.read_text()):
            methods = {("fine-tuned ensemble (5)" if k.startswith("fine-tuned ensemble") else k): v
                       for k, v in row["methods"].items()}  # the pipeline names it 'fine-tuned ensemble ×5'
            by_seed[(row["shift"], row["per_class"])].setdefault(row["seed"], {}).update(methods)
    return {case: [seeds[s] for s in sorted(seeds)] for case, seeds in by_seed.items()}


def shown(runs: list[dict]) -> list[str]:
    """Return the methods every seed of a case has: the baselines first, then in the first seed's order."""
    common = [name for name in runs[0] if all(name in r for r in runs)]
    return [n for n in FIRST if n in common] + [n for n in common if n not in FIRST]


def paired(runs: list[dict], a: str, b: str, key: str) -> str:
    """Return 'mean(a − b) ± standard error' over seeds (paired by seed)."""
    d = np.array([r[a][key] - r[b][key] for r in runs])
    se = d.std(ddof=1) / np.sqrt(len(d)) if len(d) > 1 else float("nan")
    return f"{d.mean():+.3f} ± {se:.3f}"


def comparison_table(paths: list[Path], baseline: str, others: list[str]) -> str:
    """Return a table of paired differences (other − baseline) in NLL and ECE per case, mean ± SE over seeds."""
    lines = [f"| case | seeds | method | NLL − {baseline} | ECE − {baseline} | accuracy − {baseline} |", "|---|---|---|---|---|---|"]
    for (shift, k), runs in sorted(load_cases(paths).items()):
        for name in others:
            use = [r for r in runs if name in r and baseline in r]
            if len(use) < 2:
                continue
            lines.append(f"| {shift} {k}/class | {len(use)} | {name} | {paired(use, name, baseline, 'nll')} | "
                         f"{paired(use, name, baseline, 'ece')} | {paired(use, name, baseline, 'accuracy')} |")
    return "\n".join(lines)


def classification_tables(paths: list[Path]) -> str:
    cases = load_cases(paths)
    lines = []
    verdict = ["| case | labels/class | seeds | default acc − fine-tuned acc | default NLL vs fine-tuned | default ECE ≤ 0.05 |",
               "|---|---|---|---|---|---|"]
    for (shift, k), runs in sorted(cases.items()):
        lines += [f"### {shift}, {k} labels per class ({len(runs)} seed{'s' if len(runs) > 1 else ''}, mean ± sd)", "",
                  "| method | accuracy | NLL | Brier | ECE | chosen s², τ, T per seed |", "|---|---|---|---|---|---|"]
        for name in shown(runs):
            cells = " | ".join(_cell([r[name][key] for r in runs]) for key in KEYS)
            bold = "**" if name == DEFAULT else ""
            lines.append(f"| {bold}{name}{bold} | {cells} | {_chosen(runs, name) if name.endswith('pairwise') else ''} |")
        lines.append("")
        d = {key: float(np.mean([r[DEFAULT][key] for r in runs])) for key in KEYS}
        f = {key: float(np.mean([r["fine-tuned"][key] for r in runs])) for key in KEYS}
        verdict.append(f"| {shift} | {k} | {len(runs)} | {100 * (d['accuracy'] - f['accuracy']):+.1f} points | "
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
    ap.add_argument("--compare", nargs="*", default=None,
                    help="instead of the tables: paired differences of these methods against the default, per case")
    args = ap.parse_args(argv)
    if args.classification and args.compare:
        print(comparison_table(args.classification, DEFAULT, args.compare))
    elif args.classification:
        print(classification_tables(args.classification))
    if args.regression:
        print(regression_tables(args.regression))
    return 0


if __name__ == "__main__":
    sys.exit(main())
