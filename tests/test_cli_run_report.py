"""What `adapt`/`compare`/`export` print about the hyperparameters: every chosen value, and why."""

from types import SimpleNamespace

from ntk_studio.cli.run_report import print_hyper


def hyper(**kw):
    base = {"fitted": True, "method": "held-out NLL", "prior_var": 0.25, "initial_prior_var": 1.0, "noise": None,
            "initial_noise": None, "cov_scale": 1.0, "temperature": 1.0, "log_evidence": None, "why": None}
    return SimpleNamespace(hyper={**base, **kw})


def test_classifier_temperature_scale_and_reason_are_printed(capsys):
    print_hyper(hyper(cov_scale=0.02, temperature=1.7, why="s² = 0.25 by the Laplace evidence; τ, T by 5-fold held-out NLL"))
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("hyperparameters fitted (held-out NLL): s² = 0.25 (started at 1)")
    assert "logit-covariance scale τ = 0.02" in out[0] and "logit temperature T = 1.7" in out[0]
    assert out[1] == "  why: s² = 0.25 by the Laplace evidence; τ, T by 5-fold held-out NLL"


def test_neutral_scale_and_temperature_and_no_reason_print_nothing_extra(capsys):
    print_hyper(hyper(noise=0.1, initial_noise=0.3, log_evidence=-12.5))
    out = capsys.readouterr().out.splitlines()
    assert out == ["hyperparameters fitted (held-out NLL): s² = 0.25 (started at 1), σ² = 0.1 (started at 0.3); "
                   "log evidence -12.5"]


def test_regression_variance_scale_is_not_called_a_logit_scale(capsys):
    print_hyper(hyper(method="shift", noise=0.2, initial_noise=0.3, cov_scale=1.46, temperature=None))
    out = capsys.readouterr().out.splitlines()
    assert "variance scale (s², σ² both ×τ) τ = 1.46" in out[0] and "logit" not in out[0]
