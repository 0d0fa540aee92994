"""Markdown tables for benchmarks 1, 2 and 4 (benchmark 3's table is operators.operators_table)."""

from __future__ import annotations

import math

DASH = "–"


def fmt_s(seconds: float | None) -> str:
    """Return a duration as '12.3 ms', '456 ms' or '7.89 s' ('–' for None)."""
    if seconds is None:
        return DASH
    if seconds < 1e-2:
        return f"{seconds * 1e3:.2f} ms"
    if seconds < 1:
        return f"{seconds * 1e3:.0f} ms"
    return f"{seconds:.2f} s" if seconds < 100 else f"{seconds:.0f} s"


def fmt_mib(mib: float | None) -> str:
    """Return MiB with thousands separators, '<1' below one ('–' for None)."""
    if mib is None:
        return DASH
    return "<1" if mib < 1 else f"{mib:,.0f}"


def fmt_rel(x: float | None) -> str:
    """Return a relative error as a percentage or in scientific notation ('–' for None)."""
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return DASH
    if x == 0:
        return "0 (is the reference)"
    return f"{100 * x:.1f}%" if x >= 1e-3 else f"{x:.1e}"


def _line(cells) -> str:
    return "| " + " | ".join(str(c) for c in cells) + " |"


def peers_table(result: dict) -> str:
    """Return benchmark 1's table: time, memory and variance error per method, with ratios to ours."""
    rows = result["rows"]
    ours = next((r for r in rows if r["key"] == "ours_fn_chol" and r["status"] == "ok"), None)
    base_total = ours["fit_s"] + ours["predict_s"] if ours else None
    head = ["method", "by", "dtype", "fit", "predict", "fit + predict", "× ours (auto route)", "peak extra MiB",
            "var. error max", "var. error median", "notes"]
    out = [_line(head), _line(["---"] * len(head))]
    for r in rows:
        if r["status"] != "ok":
            partial = f" (fit took {fmt_s(r['fit_s'])})" if r.get("fit_s") is not None else ""
            out.append(_line([r["label"], r["family"], r["dtype"], r.get("reason", r["status"]) + partial]
                             + [DASH] * (len(head) - 4)))
            continue
        total = r["fit_s"] + r["predict_s"]
        err = r.get("var_error", {})
        notes = []
        if r.get("test_points") and r["test_points"] < result["settings"]["m"]:
            notes.append(f"variance at {r['test_points']} of {result['settings']['m']} test points")
        if r.get("var_negative"):
            notes.append(f"{r['var_negative']} variances ≤ 0")
        out.append(_line([
            # The dense baseline has no separate fit: all of its work happens at prediction.
            r["label"], r["family"], r["dtype"], fmt_s(r["fit_s"]) if r["fit_s"] else DASH, fmt_s(r["predict_s"]),
            fmt_s(total),
            f"{total / base_total:.1f}×" if base_total else DASH, fmt_mib(r.get("peak_extra_mib")),
            fmt_rel(err.get("max_rel")), fmt_rel(err.get("median_rel")), "; ".join(notes),
        ]))
    return "\n".join(out)


def scaling_table(rows: list[dict], key: str) -> str:
    """Return benchmark 2's table for one sweep (key 'n' or 'P'): time and memory per route and size."""
    routes = list(dict.fromkeys(r["route"] for r in rows))
    sizes = sorted({r[key] for r in rows})
    by = {(r["route"], r[key]): r for r in rows}
    head = [key] + [f"{rt} time / MiB" for rt in routes]
    out = [_line(head), _line(["---"] * len(head))]
    for size in sizes:
        cells = [f"{size:,}"]
        for rt in routes:
            r = by.get((rt, size))
            if r is None:
                cells.append(DASH)
            elif r["status"] == "ok":
                cells.append(f"{fmt_s(r['total_s'])} / {fmt_mib(r.get('peak_extra_mib'))}")
            else:
                cells.append(r.get("reason", r["status"]))
        out.append(_line(cells))
    return "\n".join(out)


def adaptation_table(result: dict) -> str:
    """Return benchmark 4's table: time to reach fine-tuning's final metric, and NLL at equal time."""
    head = ["example", "n adapt / test", "metric", "GP value", "GP time", "FT final value", "FT time (all epochs)",
            "FT time to its final value", "FT time to GP's value", "GP NLL", "FT NLL at GP's time (epoch)",
            "FT NLL final"]
    out = [_line(head), _line(["---"] * len(head))]
    for r in result["rows"]:
        if r.get("status") == "error":
            out.append(_line([r["example"], r["reason"]] + [DASH] * (len(head) - 2)))
            continue
        gp, ft = r["gp"], r["ft"]
        digits = 3
        to_gp = fmt_s(ft["time_to_gp_metric"]) if ft["time_to_gp_metric"] is not None else f"never in {r['epochs']} epochs"
        out.append(_line([
            r["example"], f"{r['n_train']} / {r['n_test']}", r["metric_name"], f"{gp['metric']:.{digits}f}",
            fmt_s(gp["seconds"]), f"{ft['final_metric']:.{digits}f}", fmt_s(ft["seconds"]),
            fmt_s(ft["time_to_own_final"]), to_gp, f"{gp['nll']:.3f}",
            f"{ft['nll_at_gp_time']:.3f} ({ft['epoch_at_gp_time']})", f"{ft['final_nll']:.3f}",
        ]))
    return "\n".join(out)
