"""The headless demo through the CLI: writes real metrics, and the adapted GP beats the pretrained net."""

import json
import math

import pytest
import torch

from ntk_studio.cli.main import main
from ntk_studio.core.metrics_regression import gaussian_nll, interval_coverage, rmse


def test_demo_writes_metrics_and_the_gp_adapts(tmp_path, capsys):
    out = tmp_path / "out.json"
    assert main(["demo", "--json", str(out), "--quiet"]) == 0
    result = json.loads(out.read_text())
    gp, base = result["gp"], result["unadapted"]
    for m in (gp, base):
        assert set(m) >= {"rmse", "nll", "coverage95", "wall_time_s"}
        assert m["wall_time_s"] >= 0
    assert result["n_train"] == 10
    assert gp["rmse"] < 0.5 * base["rmse"]
    assert gp["nll"] < base["nll"]
    assert gp["coverage95"] >= 0.8
    assert gp["route"] == "function/cholesky" and gp["residual"] < 1e-10
    printed = capsys.readouterr().out
    assert "linearized GP" in printed and f"{gp['rmse']:.3f}" in printed


def test_demo_rejects_a_bad_parameter_selection(capsys):
    assert main(["demo", "--params", "nope", "--quiet"]) == 2
    assert "No parameter is named 'nope'" in capsys.readouterr().err


def test_metrics_against_hand_computed_values():
    mean = torch.tensor([0.0, 1.0, 2.0], dtype=torch.float64)
    y = torch.tensor([0.0, 2.0, 4.0], dtype=torch.float64)
    var = torch.tensor([1.0, 1.0, 4.0], dtype=torch.float64)
    assert rmse(mean, y) == pytest.approx(math.sqrt(5 / 3))
    # per point: 0.5·log(2π·var) + (y−μ)²/(2 var): 0.9189, 1.4189, 1.6121+0.5
    expected = (0.5 * math.log(2 * math.pi) * 3 + 0.5 * math.log(4) + 0 + 0.5 + 0.5) / 3
    assert gaussian_nll(mean, var, y) == pytest.approx(expected)
    # |y−μ| = 0, 1, 2 against 1.96·σ = 1.96, 1.96, 3.92: all inside at 95%, one outside at 50%
    assert interval_coverage(mean, var, y, 0.95) == pytest.approx(1.0)
    assert interval_coverage(mean, var, y, 0.5) == pytest.approx(1 / 3)
