"""A user's own 1-channel CNN (TorchScript, state dict + factory, torch.export) adapted to shifted
grayscale data (PNG folder, NPZ) through `adapt`, `compare`, the worker jobs and the library.

Each test is one of the six failures a new user met (issue #13); the numbers are real: the
unadapted model is wrong on almost every shifted image, the adapted one must beat it.
"""

import json

import numpy as np
import pytest
import torch

from job_runner import run as run_job
from ntk_studio.cli.main import main
from ntk_studio.jobs.tasks import WorkerState
from pipeline_models import build_model, save_data, save_formats

FORMATS = ("torchscript", "state_dict", "export")
N_ADAPT = "16"
MIN_GAIN = 0.3  # accuracy points the adapted model must gain over the unadapted one


@pytest.fixture(scope="module")
def user(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("user")
    return {"models": save_formats(tmp), "data": save_data(tmp), "tmp": tmp}


def _model_args(user, fmt):
    path, arch = user["models"][fmt]
    return ["--model", str(path)] + (["--arch", arch] if arch else [])


def _acc(records, method_prefix):
    return next(r["metrics"]["accuracy"] for r in records if r["method"].startswith(method_prefix))


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("data", ["folder", "npz"])
def test_adapt_classifies_with_a_grayscale_cnn(user, fmt, data, tmp_path, capsys):
    """Failures 1-3: adapt does classification, reads grayscale for a 1-channel model, and integer
    NPZ labels become classes (task auto, explained in the output)."""
    out = tmp_path / "m.json"
    preds = tmp_path / "p.csv"
    rc = main(["adapt", *_model_args(user, fmt), "--data", str(user["data"][data]), "--n-adapt", N_ADAPT,
               "--json", str(out), "--predictions", str(preds)])
    text = capsys.readouterr()
    assert rc == 0, text.err
    assert "task: classification" in text.out
    res = json.loads(out.read_text())
    assert res["task"] == "classification"
    gain = _acc(res["records"], "linearized") - _acc(res["records"], "unadapted")
    assert gain > MIN_GAIN
    header = preds.read_text().splitlines()[0].split(",")
    assert header[:2] == ["row", "y"] and any(h.startswith("p_") for h in header)


def test_npz_without_channel_axis_and_forced_regression(user, tmp_path, capsys):
    """(N, H, W) arrays get their channel axis; --task regression on integer labels is refused clearly
    (the model has 2 outputs, the targets 1 column)."""
    args = ["adapt", *_model_args(user, "state_dict"), "--data", str(user["data"]["npz_hw"]), "--n-adapt", N_ADAPT]
    assert main(args + ["--json", str(tmp_path / "m.json")]) == 0
    assert json.loads((tmp_path / "m.json").read_text())["task"] == "classification"
    capsys.readouterr()
    assert main(args + ["--task", "regression"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "2 outputs" in err and "Traceback" not in err


def test_compare_channel_mismatch_is_a_one_line_error(user, capsys):
    """Failure 4: a forced channel count the model cannot take is `error: ...`, exit 2, in compare too."""
    for cmd in ("adapt", "compare"):
        rc = main([cmd, *_model_args(user, "torchscript"), "--data", str(user["data"]["folder"]), "--channels", "3"])
        err = capsys.readouterr().err
        assert rc == 2, err
        assert err.startswith("error: ") and "1 input channel" in err and "Traceback" not in err
        assert len(err.strip().splitlines()) == 1


@pytest.mark.parametrize("fmt", ["torchscript", "export"])
def test_compare_finetunes_scripted_and_exported_models(user, fmt, tmp_path, capsys):
    """Failure 5: fine-tuning works on TorchScript and torch.export programs (no module deep copy)."""
    out = tmp_path / "c.json"
    rc = main(["compare", *_model_args(user, fmt), "--data", str(user["data"]["npz"]), "--n-adapt", N_ADAPT,
               "--epochs", "40", "--lr", "0.05", "--json", str(out)])
    assert rc == 0, capsys.readouterr().err
    records = json.loads(out.read_text())["records"]
    assert [r["method"] for r in records] == ["unadapted", "linearized classifier", "fine-tuned"]
    assert _acc(records, "fine-tuned") - _acc(records, "unadapted") > MIN_GAIN
    assert _acc(records, "linearized") - _acc(records, "unadapted") > MIN_GAIN


@pytest.mark.parametrize("fmt", FORMATS)
def test_worker_jobs_adapt_and_finetune_every_format(user, fmt):
    """The app's path: load model + folder, fit the classifier, fine-tune (TorchScript included)."""
    path, arch = user["models"][fmt]
    state = WorkerState()
    run_job(state, "load_model", path=str(path), arch=arch)
    run_job(state, "load_data", path=str(user["data"]["folder"]))
    _, fit = run_job(state, "fit_gp", n_adapt=int(N_ADAPT), device="cpu")
    assert fit["task"] == "classification"
    assert fit["metrics"]["accuracy"] - fit["unadapted_metrics"]["accuracy"] > MIN_GAIN
    _, ft = run_job(state, "finetune", n_adapt=int(N_ADAPT), device="cpu", epochs=40, lr=0.05)
    assert ft["metrics"]["accuracy"] - fit["unadapted_metrics"]["accuracy"] > MIN_GAIN


@pytest.mark.parametrize("fmt", FORMATS)
def test_library_pipeline_every_format(user, fmt):
    """The library: load the model, read the folder shaped for it, run the one pipeline."""
    from ntk_studio.core.models import load_model
    from ntk_studio.core.pipeline import RunSettings, load_data_for, run

    path, arch = user["models"][fmt]
    model = load_model(path, arch=arch).module
    data = load_data_for(model, user["data"]["folder"])
    assert data.dataset.X.shape[1] == 1 and data.task == "classification"
    result = run(model, data, RunSettings(n_adapt=int(N_ADAPT), epochs=40, lr=0.05), methods=("linearized", "fine-tuned"))
    acc = {r.method: r.metrics["accuracy"] for r in result.records}
    assert acc["linearized classifier"] - acc["unadapted"] > MIN_GAIN
    assert acc["fine-tuned"] - acc["unadapted"] > MIN_GAIN
    assert result.hyper["prior_var"] > 0 and result.hyper["fitted"]


def test_finetune_torchscript_leaves_the_model_untouched(user):
    """core.finetune is functional over a parameter dict: TorchScript works, the input model is unchanged."""
    from ntk_studio.core.data.dataset import Dataset
    from ntk_studio.core.finetune import FineTuneSettings, finetune, predict
    from ntk_studio.core.models import load_model

    model = load_model(user["models"]["torchscript"][0]).module
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    X = np.load(user["data"]["npz"])["X"]
    y = np.load(user["data"]["npz"])["y"]
    ds = Dataset(torch.from_numpy(X), torch.from_numpy(y), ("L",), "class", class_names=("0", "1"))
    res = finetune(model, ds, None, FineTuneSettings(task="classification", epochs=30, lr=0.05, patience=None))
    acc = float((predict(res, ds.X).argmax(1) == ds.y).double().mean())
    assert acc > 0.9
    assert all(torch.equal(before[n], p) for n, p in model.named_parameters())


def test_over_budget_plan_is_switched_with_its_reason(user):
    """Failure 6: the plan comes first; a subset whose dense route exceeds the budget is switched, with the reason."""
    from ntk_studio.core.pipeline import RunSettings, load_data_for, plan_run

    model = build_model()
    data = load_data_for(model, user["data"]["npz"])
    plan = plan_run(model, data, RunSettings(n_adapt=int(N_ADAPT)), memory_budget=20_000)
    assert plan.solver == "cg" and "budget" in plan.describe()


def test_faces_defaults_to_its_head_everywhere():
    """Failure 6: the faces example's default subset (the new head) comes from one place."""
    from ntk_studio.app.defaults import EXAMPLE_DEFAULTS
    from ntk_studio.pipeline_defaults import settings_for

    assert settings_for("faces").params == "head"
    assert EXAMPLE_DEFAULTS["faces"]["params"] == "head"
    assert EXAMPLE_DEFAULTS["hprice3"]["data"]["n_adapt"] == settings_for("hprice3").n_adapt
    assert EXAMPLE_DEFAULTS["hprice3"]["method"]["lr"] == settings_for("hprice3").lr


def test_export_refuses_torchscript_before_any_work(user, tmp_path, capsys):
    """Export says what it cannot export before fitting anything (the app checks before its save dialog)."""
    rc = main(["export", *_model_args(user, "torchscript"), "--data", str(user["data"]["npz"]),
               "--onnx", str(tmp_path / "m.onnx")])
    out = capsys.readouterr()
    assert rc == 2 and out.err.startswith("error: ") and "TorchScript" in out.err
    assert "plan:" not in out.out and not (tmp_path / "m.onnx").exists()
