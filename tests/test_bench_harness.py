"""Smoke tests of the benchmark harness helpers (bench/): child limits, the shared problem, extrapolation.

The benchmarks themselves are not unit tests; these check the pieces whose mistakes would silently
corrupt a table: the memory/time guards, the dense float64 reference, and the skip projections.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

BENCH = Path(__file__).resolve().parents[1] / "bench"
sys.path.insert(0, str(BENCH))

import _limits  # noqa: E402
import _problem as prob  # noqa: E402
import scaling  # noqa: E402
import tables  # noqa: E402

MIB = 1024**2


def test_parse_lines_merges_json_lines_later_wins():
    text = 'noise\n{"a": 1, "b": 2}\nnot json {\n{"b": 3}\n{broken\n'
    assert _limits.parse_lines(text) == {"a": 1, "b": 3}


def test_run_limited_returns_child_json_and_ok():
    code = "import json; print(json.dumps({'x': 1})); print(json.dumps({'y': 2}))"
    res = _limits.run_limited(["-c", code], timeout_s=30, mem_limit_bytes=512 * MIB)
    assert res["status"] == "ok"
    assert res["x"] == 1 and res["y"] == 2


def test_run_limited_keeps_partial_results_of_a_timed_out_child():
    code = "import json, time; print(json.dumps({'fit_s': 0.5}), flush=True); time.sleep(30)"
    res = _limits.run_limited(["-c", code], timeout_s=1.5, mem_limit_bytes=512 * MIB)
    assert res["status"] == "timeout"
    assert res["fit_s"] == 0.5
    assert res["wall_s"] < 10


def test_run_limited_stops_a_child_that_exceeds_the_memory_limit():
    # 600 MiB touched page by page against a 200 MiB limit: the watchdog or the data cap must stop it.
    code = "import numpy as np; a = np.ones(600 * 1024**2 // 8); print('{\"done\": 1}')"
    res = _limits.run_limited(["-c", code], timeout_s=30, mem_limit_bytes=200 * MIB)
    assert res["status"] in ("killed", "oom")
    assert "done" not in res


def test_width_for_params_hits_each_decade():
    for target in (10**3, 10**4, 10**5, 10**6):
        w = prob.width_for_params(target)
        assert abs(prob.mlp_params(w) - target) / target < 0.03  # widths are integers: 1,027 for 10³
        assert prob.mlp_params(w) == sum(p.numel() for p in prob.mlp(w).parameters())
    assert prob.mlp_params(prob.DEFAULT_WIDTH) == 17_793


def test_dense_reference_matches_our_exact_gp_in_float64():
    from ntk_studio.core import LinearizedGP

    torch.set_num_threads(1)
    X, y = prob.data(30, prob.TRAIN_SEED)
    Xs, _ = prob.data(7, prob.TEST_SEED)
    mean, var = prob.dense_ntk_posterior(prob.mlp(6), X, y, Xs, torch.float64)
    gp = LinearizedGP(prob.mlp(6), prior_var=prob.PRIOR_VAR, noise=prob.NOISE, space="function",
                      solver="cholesky").fit(X, y)
    m2, v2 = gp.predict(Xs)
    assert torch.allclose(mean, m2, rtol=1e-9, atol=1e-10)
    assert torch.allclose(var, v2, rtol=1e-7, atol=1e-12)
    # The posterior variance is below the prior variance and positive.
    Js = prob.dense_jacobian(prob.mlp(6), Xs, torch.float64)
    prior = prob.PRIOR_VAR * (Js * Js).sum(1)
    assert bool((var > 0).all()) and bool((var < prior).all())


def test_relative_errors_max_and_median():
    err = prob.relative_errors(torch.tensor([1.1, 2.0, 3.3]), torch.tensor([1.0, 2.0, 3.0]))
    assert err["max_rel"] == pytest.approx(0.1)
    assert err["median_rel"] == pytest.approx(0.1)


def test_projection_uses_the_measured_slope_and_clamps_it():
    hist = [{"status": "ok", "n": 100, "total_s": 1.0}, {"status": "ok", "n": 1000, "total_s": 100.0}]
    assert scaling._projected_s(hist, 10_000, "n") == pytest.approx(10_000.0)  # slope 2
    steep = [{"status": "ok", "n": 100, "total_s": 1.0}, {"status": "ok", "n": 200, "total_s": 64.0}]
    assert scaling._projected_s(steep, 400, "n") == pytest.approx(64.0 * 8)  # slope 6 clamped to 3
    assert scaling._projected_s([], 400, "n") is None


def test_scaling_skips_what_does_not_fit_without_starting_a_child():
    row = scaling._point("ours_w_chol", 1000, prob.width_for_params(10**6), [], "P", (10.0, 1024**3), lambda s: None)
    assert row["status"] == "skipped" and row["reason"].startswith("does not fit (estimate")
    assert "wall_s" not in row


def test_tables_show_skip_reasons_and_ratios():
    result = {"settings": {"m": 10}, "rows": [
        {"key": "ours_fn_chol", "family": "ours", "label": "fn chol", "dtype": "float64", "status": "ok",
         "fit_s": 1.0, "predict_s": 1.0, "peak_extra_mib": 10.0, "test_points": 10,
         "var_error": {"max_rel": 1e-12, "median_rel": 1e-13}},
        {"key": "la_full", "family": "laplace-torch", "label": "full", "dtype": "float32", "status": "ok",
         "fit_s": 5.0, "predict_s": 1.0, "peak_extra_mib": 0.5, "test_points": 10,
         "var_error": {"max_rel": 0.25, "median_rel": 0.05}},
        {"key": "la_kron", "family": "laplace-torch", "label": "kron", "dtype": "float32", "status": "skipped",
         "reason": "does not fit (estimate 9.0 GiB > 8 GiB budget)"},
    ]}
    text = tables.peers_table(result)
    assert "| 3.0× |" in text and "| 25.0% | 5.0% |" in text and "| <1 |" in text
    assert "does not fit (estimate 9.0 GiB > 8 GiB budget)" in text


def test_scaling_table_puts_each_route_in_its_column():
    rows = [
        {"route": "a", "n": 100, "status": "ok", "total_s": 0.5, "peak_extra_mib": 12.0},
        {"route": "b", "n": 100, "status": "skipped", "reason": "does not fit (estimate 9.4 GiB)"},
        {"route": "a", "n": 1000, "status": "timeout", "reason": "did not finish in 240 s"},
    ]
    lines = tables.scaling_table(rows, "n").splitlines()
    assert lines[2] == "| 100 | 500 ms / 12 | does not fit (estimate 9.4 GiB) |"
    assert lines[3] == "| 1,000 | did not finish in 240 s | – |"


def test_adaptation_table_says_when_fine_tuning_never_reaches_the_gp():
    ft = {"final_metric": 0.237, "seconds": 0.5, "time_to_own_final": 0.2, "time_to_gp_metric": None,
          "nll_at_gp_time": 39.4, "epoch_at_gp_time": 300, "final_nll": 39.4}
    row = {"example": "sine", "n_train": 10, "n_test": 200, "metric_name": "rmse", "epochs": 300,
           "gp": {"metric": 0.145, "seconds": 0.73, "nll": 0.085}, "ft": ft}
    text = tables.adaptation_table({"rows": [row, {"example": "faces", "status": "error", "reason": "no weights"}]})
    assert "| never in 300 epochs |" in text and "| 39.400 (300) |" in text
    assert "| faces | no weights |" in text
