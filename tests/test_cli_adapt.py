"""`adapt` and `inspect` end to end on user files: real metrics, typed errors, exit codes, no tracebacks."""

import csv
import json

import numpy as np
import pytest
import torch

from ntk_studio.cli.main import main

ARCH = '''
import torch
def build():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(3, 16), torch.nn.Tanh(), torch.nn.Linear(16, 1))
'''


@pytest.fixture
def files(tmp_path):
    """A pretrained-looking model (fit to y = sum x) and shifted new data (y = sum x + 0.5 x0²)."""
    arch = tmp_path / "arch.py"
    arch.write_text(ARCH)
    ns: dict = {}
    exec(ARCH, ns)
    model = ns["build"]()
    g = torch.Generator().manual_seed(1)
    Xs = torch.randn(400, 3, generator=g)
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    for _ in range(300):
        opt.zero_grad()
        loss = ((model(Xs)[:, 0] - Xs.sum(1)) ** 2).mean()
        loss.backward()
        opt.step()
    weights = tmp_path / "model.pt"
    torch.save(model.state_dict(), weights)
    pickled = tmp_path / "whole.pt"
    torch.save(model, pickled)
    rng = np.random.default_rng(2)
    X = rng.normal(size=(80, 3))
    y = X.sum(1) + 0.5 * X[:, 0] ** 2 + 0.05 * rng.normal(size=80)
    data = tmp_path / "data.csv"
    with data.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["a", "b", "c", "target", "year"])
        for i, (row, t) in enumerate(zip(X, y)):
            w.writerow([*row, t, 1981 if i % 2 else 1978])
    return {"arch": f"{arch}:build", "weights": weights, "pickled": pickled, "data": data, "tmp": tmp_path}


def test_adapt_writes_metrics_and_predictions(files, capsys):
    out, preds = files["tmp"] / "out.json", files["tmp"] / "preds.csv"
    before = files["data"].read_bytes()
    code = main([
        "adapt", "--model", str(files["weights"]), "--arch", files["arch"], "--data", str(files["data"]),
        "--target", "target", "--features", "a", "b", "c", "--n-adapt", "40", "--noise", "0.01",
        "--fit-hyper", "--json", str(out), "--predictions", str(preds), "--quiet",
    ])
    assert code == 0, capsys.readouterr().err
    result = json.loads(out.read_text())
    gp, base = result["metrics"]["gp"], result["metrics"]["unadapted"]
    assert result["n_adapt"] == 40 and result["n_test"] == 40 and result["task"] == "regression"
    assert result["hyper"]["fitted"] and result["hyper"]["initial_noise"] == 0.01
    assert gp["rmse"] < 0.6 * base["rmse"]
    assert gp["nll"] < base["nll"]
    assert result["inputs"]["model_format"] == "state_dict" and len(result["inputs"]["model_sha256"]) == 64
    with preds.open() as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 40 and set(rows[0]) == {"row", "y", "mean", "std", "unadapted"}
    assert all(float(r["std"]) > 0 for r in rows)
    assert files["data"].read_bytes() == before


def test_adapt_on_one_group_value(files, capsys):
    code = main([
        "adapt", "--model", str(files["weights"]), "--arch", files["arch"], "--data", str(files["data"]),
        "--target", "target", "--group-column", "year", "--target-value", "1981", "--n-adapt", "20", "--quiet",
    ])
    assert code == 0
    assert "adapting on 20 rows, scoring on 20 held-out rows" in capsys.readouterr().out


@pytest.mark.parametrize(
    "extra, phrase",
    [
        (["--target", "nope"], "nope"),
        (["--target", "target", "--features", "a", "b"], "expects 3"),
        (["--target", "target", "--features", "a", "b", "c", "--params", "last:9"], "last:9"),
        (["--target", "target", "--features", "a", "b", "c", "--n-adapt", "500"], "--n-adapt"),
        (["--target", "target", "--features", "a", "b", "c", "--task", "classification"], "one logit per class"),
    ],
)
def test_bad_input_exits_2_with_a_message_and_no_traceback(files, capsys, extra, phrase):
    code = main(["adapt", "--model", str(files["weights"]), "--arch", files["arch"], "--data", str(files["data"]), "--quiet", *extra])
    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith("error: ") and phrase in err
    assert "Traceback" not in err


def test_invalid_numbers_are_refused_by_the_parser(files, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["adapt", "--model", str(files["weights"]), "--data", str(files["data"]), "--noise", "-1"])
    assert exc.value.code == 2 and "greater than 0" in capsys.readouterr().err


def test_pickled_module_is_refused_unless_trusted(files, capsys):
    base = ["adapt", "--model", str(files["pickled"]), "--data", str(files["data"]), "--target", "target", "--features", "a", "b", "c", "--quiet"]
    assert main(base) == 2
    assert "--trust-pickle" in capsys.readouterr().err
    assert main(base + ["--trust-pickle"]) == 0


def test_inspect_prints_layers_and_parameter_counts(files, capsys):
    assert main(["inspect", "--model", str(files["weights"]), "--arch", files["arch"], "--input-shape", "3"]) == 0
    out = capsys.readouterr().out
    assert "Linear" in out and "81" in out and "total" in out  # 3·16 + 16 + 16 + 1 = 81
    assert main(["inspect", "--model", str(files["tmp"] / "missing.pt")]) == 2


def test_debug_shows_the_traceback(files):
    with pytest.raises(Exception, match="nope"):
        main(["adapt", "--model", str(files["weights"]), "--arch", files["arch"], "--data", str(files["data"]), "--target", "nope", "--debug", "--quiet"])


def test_standardize_x_leaves_the_targets_in_their_units(files, capsys):
    """--standardize-x rescales inputs only: the model predicts y in its own units, so y must stay raw."""
    preds = files["tmp"] / "std.csv"
    code = main([
        "adapt", "--model", str(files["weights"]), "--arch", files["arch"], "--data", str(files["data"]),
        "--target", "target", "--features", "a", "b", "c", "--n-adapt", "40", "--standardize-x",
        "--predictions", str(preds), "--quiet",
    ])
    assert code == 0, capsys.readouterr().err
    with files["data"].open() as fh:
        raw_targets = {round(float(r["target"]), 9) for r in csv.DictReader(fh)}
    with preds.open() as fh:
        shown = [round(float(r["y"]), 9) for r in csv.DictReader(fh)]
    assert len(shown) == 40 and set(shown) <= raw_targets
