"""PNG plots of the scaling sweeps (benchmark 2) and of adaptation vs fine-tuning (benchmark 4).

matplotlib is a benchmark-only dependency (installed by bench/setup_peers.sh, never an app one).
"""

from __future__ import annotations

from pathlib import Path

MIB_PER_GIB = 1024
STYLES = {  # route -> (colour, marker)
    "ours_fn_chol": ("tab:blue", "o"),
    "ours_fn_cg": ("tab:cyan", "s"),
    "ours_w_chol": ("tab:green", "^"),
    "ours_w_cg": ("tab:olive", "v"),
    "dense": ("tab:red", "x"),
}


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def scaling_png(rows: list[dict], key: str, labels: dict[str, str], title: str, path: Path) -> Path:
    """Write a log-log figure (time, peak extra memory) against `key` for each route; return the path."""
    plt = _pyplot()
    fig, (ax_t, ax_m) = plt.subplots(1, 2, figsize=(11, 5.0))
    for route in dict.fromkeys(r["route"] for r in rows):
        ok = sorted((r for r in rows if r["route"] == route and r["status"] == "ok"), key=lambda r: r[key])
        if not ok:
            continue
        colour, marker = STYLES.get(route, ("black", "."))
        xs = [r[key] for r in ok]
        ax_t.plot(xs, [r["total_s"] for r in ok], marker=marker, color=colour, label=labels.get(route, route))
        ax_m.plot(xs, [max(r.get("peak_extra_mib") or 0, 1) / MIB_PER_GIB for r in ok], marker=marker, color=colour,
                  label=labels.get(route, route))
        failed = next((r for r in rows if r["route"] == route and r["status"] != "ok" and r[key] > xs[-1]), None)
        if failed:  # mark where the route fell over, at the size it could not reach
            ax_t.plot([failed[key]], [ok[-1]["total_s"]], marker="$\\times$", color=colour, markersize=11, linestyle="")
    ax_t.set(xscale="log", yscale="log", xlabel=key, ylabel="fit + predict, seconds", title=f"{title}: time")
    ax_m.set(xscale="log", yscale="log", xlabel=key, ylabel="peak extra RSS, GiB", title=f"{title}: memory")
    for ax in (ax_t, ax_m):
        ax.grid(True, which="both", alpha=0.3)
    handles, names = ax_t.get_legend_handles_labels()
    fig.legend(handles, names, loc="lower center", ncol=3, fontsize=8, bbox_to_anchor=(0.5, 0.04))
    fig.text(0.5, 0.005, "large × after the last point of a curve: the next size was skipped (memory estimate or "
             "projected time), timed out or ran out of memory", ha="center", fontsize=8)
    fig.tight_layout(rect=(0, 0.16, 1, 1))
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def adaptation_png(result: dict, path: Path) -> Path:
    """Write one panel per example: fine-tuning's test metric over training time, the GP as a point."""
    plt = _pyplot()
    rows = [r for r in result["rows"] if r.get("status") != "error"]
    fig, axes = plt.subplots(1, max(len(rows), 1), figsize=(4.2 * max(len(rows), 1), 3.6), squeeze=False)
    for ax, r in zip(axes[0], rows):
        curve = r["ft"]["curve"]
        # Log time axis from epoch 1 (epoch 0, the unadapted model, sits at t = 0).
        times, metric = curve["times"][1:], curve["metric"][1:]
        ax.plot(times, metric, color="tab:orange", label="fine-tuning (test), per epoch")
        ax.plot([r["gp"]["seconds"]], [r["gp"]["metric"]], "o", color="tab:blue", markersize=8,
                label="linearized GP" if r["metric_name"] == "rmse" else "linearized classifier")
        ax.axhline(r["ft"]["final_metric"], color="tab:orange", linestyle=":", linewidth=1,
                   label="fine-tuning, final epoch")
        ax.axhline(curve["metric"][0], color="grey", linestyle="--", linewidth=1, label="unadapted")
        ax.set(xlabel="wall time, seconds (log)", ylabel=f"test {r['metric_name']}", title=r["example"])
        ax.set_xscale("log")
        ax.set_xlim(times[0] / 2, max(times[-1], r["gp"]["seconds"]) * 2)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
