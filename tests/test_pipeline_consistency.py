"""The same example, split and settings give the same numbers in the worker job (the app's path),
`adapt --json` / `compare --json` and the library (core.pipeline), regression and classification."""

import json

import pytest

from job_runner import run as run_job
from ntk_studio.cli.main import main
from ntk_studio.jobs.tasks import WorkerState
from pipeline_models import save_data, save_formats

TOL = 1e-10


def _same(a: dict, b: dict) -> None:
    assert set(a) == set(b)
    for key in a:
        if a[key] is None or b[key] is None:
            assert a[key] is None and b[key] is None, key
        else:
            assert abs(a[key] - b[key]) <= TOL * max(1.0, abs(b[key])), (key, a[key], b[key])


def _records(path) -> dict:
    return {r["method"]: r["metrics"] for r in json.loads(path.read_text())["records"]}


def test_sine_regression_is_identical_in_job_cli_and_library(tmp_path, capsys):
    from ntk_studio.core.examples.registry import load_example
    from ntk_studio.core.pipeline import prepare, run
    from ntk_studio.pipeline_defaults import settings_for

    s = settings_for("sine")
    ex = load_example("sine")
    lib = run(ex.model, prepare(ex.model, ex.target, "auto"), s, methods=("linearized", "fine-tuned"))
    lib_m = {r.method: r.metrics for r in lib.records}

    assert main(["adapt", "--example", "sine", "--json", str(tmp_path / "a.json"), "--quiet"]) == 0
    assert main(["compare", "--example", "sine", "--json", str(tmp_path / "c.json"), "--quiet"]) == 0
    capsys.readouterr()
    cli_a, cli_c = _records(tmp_path / "a.json"), _records(tmp_path / "c.json")

    state = WorkerState()
    run_job(state, "load_example", name="sine")
    common = {"params": s.params, "n_adapt": s.n_adapt, "seed": s.seed, "device": "cpu"}
    _, fit = run_job(state, "fit_gp", prior_var=s.prior_var, noise=s.noise, fit_hyper=s.fit_hyper, **common)
    _, ft = run_job(state, "finetune", epochs=s.epochs, lr=s.lr, batch_size=s.batch_size, **common)

    for metrics in (cli_a["linearized GP"], cli_c["linearized GP"], fit["metrics"]):
        _same(metrics, lib_m["linearized GP"])
    for metrics in (cli_a["unadapted"], cli_c["unadapted"], fit["unadapted_metrics"]):
        _same(metrics, lib_m["unadapted"])
    for metrics in (cli_c["fine-tuned"], ft["metrics"]):
        _same(metrics, lib_m["fine-tuned"])
    assert fit["hyper"]["fitted"] and fit["noise"] == pytest.approx(lib.hyper["noise"], rel=TOL)
    # The unadapted model is scored by the one rule: its own residual variance on the adaptation rows.
    assert lib.record("unadapted").extra["scored_as"] == "Gaussian, var = own adaptation MSE"


def test_user_cnn_classification_is_identical_in_job_cli_and_library(tmp_path, capsys):
    from ntk_studio.core.models import load_model
    from ntk_studio.core.pipeline import RunSettings, load_data_for, run

    path, arch = save_formats(tmp_path)["state_dict"]
    npz = save_data(tmp_path)["npz"]
    s = RunSettings(n_adapt=16, epochs=20, lr=0.05)
    model = load_model(path, arch=arch).module
    lib = run(model, load_data_for(model, npz), s, methods=("linearized", "fine-tuned"))
    lib_m = {r.method: r.metrics for r in lib.records}

    cli = ["--model", str(path), "--arch", arch, "--data", str(npz), "--n-adapt", "16", "--quiet"]
    assert main(["adapt", *cli, "--json", str(tmp_path / "a.json")]) == 0
    assert main(["compare", *cli, "--epochs", "20", "--lr", "0.05", "--json", str(tmp_path / "c.json")]) == 0
    capsys.readouterr()
    cli_a, cli_c = _records(tmp_path / "a.json"), _records(tmp_path / "c.json")

    state = WorkerState()
    run_job(state, "load_model", path=str(path), arch=arch)
    _, loaded = run_job(state, "load_data", path=str(npz))
    assert loaded["task"] == "classification" and "integer labels" in loaded["task_reason"]
    _, fit = run_job(state, "fit_gp", n_adapt=16, device="cpu")
    _, ft = run_job(state, "finetune", n_adapt=16, epochs=20, lr=0.05, device="cpu")

    for metrics in (cli_a["linearized classifier"], cli_c["linearized classifier"], fit["metrics"]):
        _same(metrics, lib_m["linearized classifier"])
    for metrics in (cli_a["unadapted"], fit["unadapted_metrics"]):
        _same(metrics, lib_m["unadapted"])
    for metrics in (cli_c["fine-tuned"], ft["metrics"]):
        _same(metrics, lib_m["fine-tuned"])
    assert lib_m["linearized classifier"]["accuracy"] > lib_m["unadapted"]["accuracy"] + 0.3
