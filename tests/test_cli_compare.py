"""`compare` runs the GP and fine-tuning of the same parameters on one split and records both."""

import json

from ntk_studio.cli.main import main


def test_compare_on_the_sine_example(tmp_path, capsys):
    out = tmp_path / "cmp.json"
    code = main(["compare", "--example", "sine", "--n-adapt", "10", "--epochs", "50", "--ensemble", "2",
                 "--json", str(out), "--quiet"])
    assert code == 0, capsys.readouterr().err
    result = json.loads(out.read_text())
    records = {r["method"]: r for r in result["records"]}
    assert set(records) == {"unadapted", "linearized GP", "fine-tuned", "fine-tuned ensemble ×2"}
    gp, base = records["linearized GP"]["metrics"], records["unadapted"]["metrics"]
    assert gp["rmse"] < 0.5 * base["rmse"] and gp["nll"] < base["nll"]
    assert records["linearized GP"]["extra"]["route"] == "function/cholesky"
    assert records["fine-tuned"]["extra"]["epochs"] == 50
    assert len(records["linearized GP"]["curves"]["calibration"]) == 19
    table = capsys.readouterr().out
    assert "linearized GP" in table and "fine-tuned" in table


def test_classification_of_real_targets_is_a_one_line_error(capsys):
    assert main(["compare", "--example", "sine", "--task", "classification", "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "integer labels" in err and len(err.strip().splitlines()) == 1
