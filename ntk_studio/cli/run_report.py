"""The lines `adapt`, `compare` and `export` print about a run: the header (task, split, plan), the
hyperparameters used and per-class results."""

from __future__ import annotations


def print_header(data, plan, n_adapt: int, n_test: int) -> None:
    """Print what was decided before any fitting: the task (and why), the split and the route."""
    print(f"task: {data.task} ({data.task_reason})")
    print(f"adapting on {n_adapt} rows, scoring on {n_test} held-out rows")
    print(f"plan: {plan.describe()}", flush=True)


def print_hyper(result) -> None:
    """Print the hyperparameters used and whether they were fitted."""
    h = result.hyper
    if not h:
        return
    how = f"fitted ({h['method']})" if h["fitted"] else "as given"
    noise = "" if h["noise"] is None else f", σ² = {h['noise']:.4g} (started at {h['initial_noise']:.4g})"
    if h.get("cov_scale") not in (None, 1.0):
        what = "logit-covariance scale" if h["noise"] is None else "variance scale (s², σ² both ×τ)"
        noise += f", {what} τ = {h['cov_scale']:.4g}"
    if h.get("temperature") not in (None, 1.0):
        noise += f", logit temperature T = {h['temperature']:.4g}"
    lml = "" if h["log_evidence"] is None else f"; log evidence {h['log_evidence']:.4g}"
    print(f"hyperparameters {how}: s² = {h['prior_var']:.4g} (started at {h['initial_prior_var']:.4g}){noise}{lml}")
    if h.get("why"):
        print(f"  why: {h['why']}")


def print_per_class(result, class_names) -> None:
    """Print each class's rows and accuracy for every method that has class probabilities."""
    y = result.y_test
    methods = [(k, v["probs"].argmax(1)) for k, v in result.predictions.items() if "probs" in v]
    lines = [["class", "n", *(f"acc {k}" for k, _ in methods)]]
    for c, name in enumerate(class_names or ()):
        rows = y == c
        n = int(rows.sum())
        lines.append([str(name), str(n), *(f"{float((pred[rows] == c).double().mean()):.3f}" if n else "–"
                                           for _, pred in methods)])
    widths = [max(len(line[i]) for line in lines) for i in range(len(lines[0]))]
    print("per class:")
    for line in lines:
        print("  " + "  ".join([line[0].ljust(widths[0]), *(c.rjust(w) for c, w in zip(line[1:], widths[1:]))]))
