"""The plan says whether a frozen prefix is cached (and how wide) or why there is none."""

from __future__ import annotations

import torch

from models import mlp, two_output
from ntk_studio.cli.main import main
from ntk_studio.core import LinearizedClassifier, LinearizedGP
from ntk_studio.core.data.dataset import Dataset
from ntk_studio.core.pipeline import plan_run
from ntk_studio.core.pipeline_data import PreparedData
from ntk_studio.pipeline_defaults import RunSettings

X = torch.randn(20, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
y = torch.sin(X[:, 0])


def test_a_fitted_gp_plan_names_the_cached_prefix():
    gp = LinearizedGP(mlp(), params="last:1", noise=0.1).fit(X, y)
    assert gp.plan.prefix_note == gp.lm.prefix_note
    assert gp.plan.describe().endswith("; " + gp.lm.prefix_note)
    assert "frozen prefix cached: 5 features per input" in gp.plan.describe()


def test_a_plan_without_prefix_says_why():
    gp = LinearizedGP(mlp(), params="all", noise=0.1).fit(X, y)
    assert gp.plan.describe().endswith("; no frozen prefix: every parameter is linearized")
    clf = LinearizedClassifier(two_output(), params="all").fit(X, (X[:, 0] > 0).long())
    assert "no frozen prefix: every parameter is linearized" in clf.plan.describe()


def test_the_classifier_plan_names_its_prefix():
    clf = LinearizedClassifier(two_output(), params="last:1").fit(X, (X[:, 0] > 0).long())
    assert "frozen prefix cached: 7 features per input" in clf.plan.describe()


def test_the_plan_before_fitting_says_the_same():
    data = PreparedData(Dataset(X, y, ("a", "b", "c"), "y"), "regression", "given")
    settings = RunSettings(params="last:1", n_adapt=12, seed=0)
    plan = plan_run(mlp(), data, settings)
    gp = LinearizedGP(mlp(), params="last:1", noise=0.1).fit(X, y)
    assert plan.prefix_note == gp.plan.prefix_note
    assert plan_run(mlp(), data, RunSettings(params="all", n_adapt=12, seed=0)).prefix_note == \
        "no frozen prefix: every parameter is linearized"


def test_cli_adapt_prints_the_prefix_in_its_plan_line(capsys):
    assert main(["adapt", "--example", "sine", "--params", "last:1", "--no-fit-hyper", "--quiet"]) == 0
    plan = [line for line in capsys.readouterr().out.splitlines() if line.startswith("plan:")]
    assert len(plan) == 1 and "frozen prefix cached: 40 features per input" in plan[0], plan
