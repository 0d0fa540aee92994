"""The engine's SolverWarnings reach the CLI user as one `warning: ...` line each on stderr."""

import warnings

import pytest

from ntk_studio.cli.commands import demo
from ntk_studio.cli.main import main
from ntk_studio.core.errors import SolverWarning
from ntk_studio.core.solvers import JitterWarning, NegativeVarianceWarning

RANK_DEFICIENT = ["adapt", "--example", "sine", "--params", "last:1", "--n-adapt", "60", "--noise", "1e-300",
                  "--no-fit-hyper", "--space", "function", "--solver", "cholesky", "--quiet"]


def test_jitter_in_a_real_fit_is_one_warning_line(capsys):
    # 60 points, a 41-parameter head: the kernel is singular and σ² = 1e-300 cannot lift it.
    assert main(RANK_DEFICIENT) == 0
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    jitter = [line for line in lines if "jitter" in line]
    assert len(jitter) == 1, err
    assert jitter[0].startswith("warning: Cholesky of the system matrix needed jitter")
    assert "JitterWarning" not in err and "gp.py" not in err  # no Python warning dump, no source line


def test_each_solver_warning_once_and_other_warnings_untouched(monkeypatch, capsys):
    def run(args):
        warnings.warn("first", JitterWarning)
        warnings.warn("first", JitterWarning)  # the same message again: shown once
        warnings.warn("clamped", NegativeVarianceWarning)
        warnings.warn("unconverged", SolverWarning)
        warnings.warn("something else", DeprecationWarning)
        return 0

    monkeypatch.setattr(demo, "run", run)
    with pytest.warns(DeprecationWarning, match="something else"):  # not a solver warning: Python's own way
        assert main(["demo", "--quiet"]) == 0
    err = capsys.readouterr().err
    assert [line for line in err.splitlines() if line.startswith("warning:")] == [
        "warning: first", "warning: clamped", "warning: unconverged"]
    assert "something else" not in err


def test_warnings_still_show_when_the_command_fails(monkeypatch, capsys):
    def run(args):
        warnings.warn("clamped", NegativeVarianceWarning)
        return 3

    monkeypatch.setattr(demo, "run", run)
    assert main(["demo", "--quiet"]) == 3
    assert "warning: clamped" in capsys.readouterr().err
