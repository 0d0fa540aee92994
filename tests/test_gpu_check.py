"""bench/gpu_check.py on the CPU at its smallest sizes: every step runs and writes its JSON and Markdown.

The GPU run (bench/gpu_check.sh on a GPU machine) is the same code at full size; this test keeps it
working between GPU runs. The shell script itself is run in --quick mode by the CI job (docs/gpu.md).
"""

import json
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parent.parent / "bench"
sys.path.insert(0, str(BENCH))

import gpu_check  # noqa: E402



pytestmark = pytest.mark.slow  # about a minute of CPU: every step of the check at its smallest size


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("gpu")
    rc = gpu_check.main(["--device", "cpu", "--tiny", "--in-process", "--out", str(out),
                         "--pytest-k", "cpu_specs or unknown_specs"])
    return rc, out, json.loads((out / "results.json").read_text()), (out / "results.md").read_text()


def test_every_step_ran_and_wrote_its_json(run):
    rc, out, results, _ = run
    assert rc == 0
    assert results["mode"] == "tiny" and results["device"] == "cpu" and results["seconds"] > 0
    assert list(results["steps"]) == list(gpu_check.STEPS)
    for step, r in results["steps"].items():
        assert r["status"] == "ok", (step, r.get("reason"))
        assert json.loads((out / f"{step}.json").read_text())["status"] == "ok"


def test_tests_step_reports_pytest_counts(run):
    _, out, results, _ = run
    t = results["steps"]["tests"]
    assert t["passed"] >= 5 and t["failures"] == 0 and t["errors"] == 0 and t["failing"] == []
    assert "--device cpu" in t["command"] and (out / "tests.xml").exists()


def test_device_and_headline_keys(run):
    _, _, results, _ = run
    d = results["steps"]["device"]
    assert d["info"]["device"] == "cpu" and d["precision"]["products"] == "float64"
    assert {"torch", "gpytorch", "onnxruntime"} <= set(d["versions"])
    h = results["steps"]["headline"]
    for key in ("n", "P", "m", "plan", "fit_s", "pilot_predict_s", "predict_s", "total_s", "peak_mib",
                "var_nonpositive", "under_target"):
        assert key in h, key
    assert h["var_nonpositive"] == 0 and h["mean_finite"] and h["prior_var_bound_ok"]
    assert {"stage", "matvecs", "residual", "elapsed_s"} <= set(h["fit_progress"])  # reported while it runs


def test_lean_route_equals_the_engine(run):
    _, _, results, _ = run
    lean = results["steps"]["lean"]
    assert lean["n"] == results["steps"]["headline"]["n"] and lean["var_nonpositive"] == 0
    assert lean["engine_var_max_rel"] < 1e-9 and lean["engine_mean_max_abs"] < 1e-9
    assert {"kernel", "cholesky", "alpha", "variance_solve"} <= set(lean["stages"])


def test_route_results_hold_errors_against_the_reference(run):
    _, _, results, _ = run
    rows = results["steps"]["peers"]["rows"]
    assert rows[0]["reference"] and rows[0]["route"] == "dense" and rows[0]["dtype"] == "float64"
    measured = {(r["route"], r["dtype"]): r for r in rows[1:]}
    assert len(measured) == 9  # 4 routes × 2 dtypes + dense float32
    exact = measured[("ours_fn_chol", "float64")]
    assert exact["var_error"]["max_rel"] < 1e-9 and exact["mean_max_abs_error"] < 1e-9
    f32 = measured[("ours_fn_chol", "float32")]
    assert 1e-12 < f32["var_error"]["max_rel"] < 0.5
    prec = results["steps"]["precision"]["rows"]
    assert {r["precision"] for r in prec} == {"float32 (cholesky)", "float32 (cg)", "float32 products + float64 solves"}
    assert all(r["status"] == "ok" and r["var_max_rel"] >= 0 for r in prec)


def test_scaling_and_limits_rows(run):
    _, _, results, _ = run
    sc = results["steps"]["scaling"]
    assert {r["route"] for r in sc["n_sweep"]} == {"ours_fn_chol", "ours_fn_cg", "ours_w_chol", "ours_w_cg", "dense"}
    assert {r["dtype"] for r in sc["P_sweep"]} == {"float64", "float32"}
    assert all(r["status"] in ("ok", "skipped", "oom") for r in sc["n_sweep"] + sc["P_sweep"])
    lim = results["steps"]["limits"]["rows"]
    assert [(r["route"], r["axis"]) for r in lim][:2] == [("ours_fn_chol", "n"), ("ours_fn_cg", "n")]
    assert len(lim) == 10
    for r in lim:
        assert r["limited_by"]
        if r.get("largest") is not None:
            assert r["largest_probe"]["status"] == "ok" and r["largest_probe"][r["axis"]] == r["largest"]
            if r.get("first_failure") is not None:
                assert r["first_failure"] > r["largest"]
    ops = results["steps"]["operators"]["rows"]
    assert {(r["model"], r["dtype"]) for r in ops} == {("mlp", "float64"), ("mlp", "float32"),
                                                        ("cnn", "float64"), ("cnn", "float32")}
    assert all(v > 0 for r in ops for v in r["forwards"].values())


def test_markdown_has_a_table_per_step(run):
    _, _, results, md = run
    assert md.startswith("# GPU check results (tiny, device cpu)")
    for title in gpu_check.STEP_TITLES.values():
        assert f"## {title}" in md
    for header in ("| step | status | seconds |", "| what | value |", "| passed | failed | errors | skipped | seconds |",
                   "| n | P | test points | dtype | route |", "| n | P | test points | route | n×n matrix |", "| route | dtype | test points | fit |",
                   "| model | dtype | n | P | forward |", "| model | n | P | σ² | precision |",
                   "| route | dtype | n | fit |", "| route | dtype | P | fit |", "| route | axis | largest that fits |"):
        assert header in md, header
    tables = [line for line in md.splitlines() if line.startswith("|")]
    seps = [line for line in tables if set(line) <= set("|-")]
    assert len(seps) >= 10
    for line in tables:  # every row has as many cells as its table's header
        assert line.endswith("|")


def test_bad_device_is_refused(tmp_path, capsys):
    assert gpu_check.main(["--device", "tpu", "--out", str(tmp_path)]) == 2
    assert "auto, cpu, cuda" in capsys.readouterr().err


def test_steps_in_child_processes_as_on_the_gpu(tmp_path):
    """The GPU run puts each step in a child process with a hard time limit: the same plumbing here."""
    assert gpu_check.main(["--device", "cpu", "--tiny", "--out", str(tmp_path), "--only", "device", "lean"]) == 0
    results = json.loads((tmp_path / "results.json").read_text())
    assert list(results["steps"]) == ["device", "lean"]
    assert results["steps"]["device"]["status"] == "ok" and results["steps"]["device"]["seconds"] > 0
    lean = results["steps"]["lean"]
    assert lean["status"] == "ok" and lean["engine_var_max_rel"] < 1e-9
    assert (tmp_path / "logs" / "lean.log").exists() and (tmp_path / "lean.json").exists()
    assert "## Headline by the lean exact route" in (tmp_path / "results.md").read_text()
