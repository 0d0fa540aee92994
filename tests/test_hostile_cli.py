"""Hostile CLI runs: exit code 2, one `error:` line naming what to fix, no traceback, inputs unchanged, no output left.

Most cases run in-process through ``ntk_studio.cli.main.main``; a few run as real subprocesses.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import warnings
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from test_hostile_support import (
    CASE_SECONDS,
    EXIT_USER_ERROR,
    assert_cli_refuses,
    listing,
    make_fifo,
    pickle_payload,
    snapshot,
)

from ntk_studio.cli import output
from ntk_studio.cli.arg_types import max_threads

ARCH = "import torch\n\ndef make():\n    torch.manual_seed(0)\n    return torch.nn.Linear(3, 1)\n"


@pytest.fixture
def files(tmp_path):
    """A state-dict model with its architecture file, a matching table, and a folder for outputs."""
    arch = tmp_path / "arch.py"
    arch.write_text(ARCH)
    weights = tmp_path / "w.pt"
    torch.manual_seed(0)
    torch.save(torch.nn.Linear(3, 1).state_dict(), weights)
    script = tmp_path / "m.ts"  # no architecture code: no isolated first run, so runs stay quick
    with warnings.catch_warnings():  # TorchScript is deprecated; users still have such files
        warnings.simplefilter("ignore")
        torch.jit.save(torch.jit.script(torch.nn.Linear(3, 1)), script)
    rng = np.random.default_rng(0)
    X = rng.standard_normal((30, 3))
    table = tmp_path / "d.csv"
    table.write_text("a,b,c,y\n" + "".join(f"{r[0]},{r[1]},{r[2]},{r.sum()}\n" for r in X))
    return {"arch": arch, "weights": weights, "data": table, "dir": tmp_path,
            "script": script, "model_args": ["--model", script]}


def _onnx(path: Path, meta: dict[str, str], width: int = 1) -> Path:
    """Write a tiny ONNX 'predictor' (mean = x·1, variance = x²·1) with the given ntk_studio.* metadata."""
    import onnx
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("x", TensorProto.DOUBLE, ["batch", width])
    outs = [helper.make_tensor_value_info(n, TensorProto.DOUBLE, ["batch", 1]) for n in ("mean", "variance")]
    ones = helper.make_tensor("ones", TensorProto.DOUBLE, [width, 1], [1.0] * width)
    nodes = [helper.make_node("MatMul", ["x", "ones"], ["mean"]), helper.make_node("Mul", ["x", "x"], ["sq"]),
             helper.make_node("MatMul", ["sq", "ones"], ["variance"])]
    graph = helper.make_graph(nodes, "tiny", [x], outs, initializer=[ones])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 9
    for key, value in meta.items():
        entry = model.metadata_props.add()
        entry.key, entry.value = "ntk_studio." + key, value
    onnx.save_model(model, str(path))
    return path


GOOD_META = {"task": "regression", "input": json.dumps({"name": "x", "dtype": "float64", "shape": ["batch", 3]}),
             "feature_names": json.dumps(["a", "b", "c"]), "class_names": "null"}


@pytest.fixture
def onnx_file(tmp_path):
    return _onnx(tmp_path / "m.onnx", GOOD_META, width=3)


def test_the_fixtures_work(files, onnx_file, capsys):
    """The hostile cases below change one thing each from these working runs."""
    from test_hostile_support import run_cli

    from ntk_studio.core.models import load_model

    code, out, err = run_cli(["predict", "--onnx", onnx_file, "--data", files["data"]], capsys)
    assert code == 0 and "30 rows predicted" in out, err
    code, out, err = run_cli(["inspect", *files["model_args"], "--input-shape", "3"], capsys)
    assert code == 0 and "output (2, 1)" in out, err
    assert load_model(files["weights"], arch=f"{files['arch']}:make").format == "state_dict"


# ---------------------------------------------------------------- options, validated by name

OPTIONS = {
    "noise inf": (["adapt", "--example", "sine", "--noise", "inf"], "--noise"),
    "noise nan": (["adapt", "--example", "sine", "--noise", "nan"], "--noise"),
    "noise negative": (["adapt", "--example", "sine", "--noise", "-1"], "--noise"),
    "noise zero": (["adapt", "--example", "sine", "--noise", "0"], "--noise"),
    "noise text": (["adapt", "--example", "sine", "--noise", "lots"], "--noise"),
    "prior var nan": (["adapt", "--example", "sine", "--prior-var", "nan"], "--prior-var"),
    "prior var inf": (["adapt", "--example", "sine", "--prior-var", "inf"], "--prior-var"),
    "prior var zero": (["adapt", "--example", "sine", "--prior-var", "0"], "--prior-var"),
    "prior var -inf": (["adapt", "--example", "sine", "--prior-var=-inf"], "--prior-var"),
    "threads 100000": (["adapt", "--example", "sine", "--threads", "100000"], "--threads"),
    "threads 0": (["adapt", "--example", "sine", "--threads", "0"], "--threads"),
    "threads negative": (["adapt", "--example", "sine", "--threads=-4"], "--threads"),
    "threads text": (["adapt", "--example", "sine", "--threads", "all"], "--threads"),
    "threads float": (["adapt", "--example", "sine", "--threads", "1.5"], "--threads"),
    "arch timeout zero": (["inspect", "--example", "sine", "--arch-timeout", "0"], "--arch-timeout"),
    "arch timeout nan": (["inspect", "--example", "sine", "--arch-timeout", "nan"], "--arch-timeout"),
    "compare epochs zero": (["compare", "--example", "sine", "--epochs", "0"], "--epochs"),
    "compare lr nan": (["compare", "--example", "sine", "--lr", "nan"], "--lr"),
    "compare lr inf": (["compare", "--example", "sine", "--lr", "inf"], "--lr"),
    "compare batch zero": (["compare", "--example", "sine", "--batch-size", "0"], "--batch-size"),
    "compare ensemble negative": (["compare", "--example", "sine", "--ensemble=-1"], "--ensemble"),
    "input shape huge": (["inspect", "--example", "sine", "--input-shape", "100000,100000"], "--input-shape"),
    "input shape zero": (["inspect", "--example", "sine", "--input-shape", "0"], "--input-shape"),
    "input shape negative": (["inspect", "--example", "sine", "--input-shape=-3,4"], "--input-shape"),
    "input shape text": (["inspect", "--example", "sine", "--input-shape", "big"], "--input-shape"),
    "input shape too many dims": (["inspect", "--example", "sine", "--input-shape", ",".join(["2"] * 9)],
                                  "--input-shape"),
}


@pytest.mark.parametrize("case", list(OPTIONS.values()), ids=list(OPTIONS))
def test_bad_option_is_refused_by_name(tmp_path, capsys, case):
    argv, flag = case
    assert_cli_refuses(argv, capsys, tmp_path, flag)


def test_thread_limit_is_this_machines_cores(tmp_path, capsys):
    assert_cli_refuses(["adapt", "--example", "sine", "--threads", str(max_threads() + 1)], capsys, tmp_path,
                       f"1 to {max_threads()}")


# ---------------------------------------------------------------- outputs never touch inputs

def _outputs(files, onnx_file):
    d, data, model = files["dir"], files["data"], files["model_args"]
    adapt = ["adapt", *model, "--data", data, "--target", "y"]
    export = ["export", *model, "--data", data, "--target", "y"]
    return {
        "predictions is the data": (adapt + ["--predictions", data], "--predictions"),
        "json is the data": (adapt + ["--json", data], "--json"),
        "json is the model": (adapt + ["--json", files["script"]], "--json"),
        "json is the arch file": (["adapt", "--model", files["weights"], "--arch", f"{files['arch']}:make", "--data",
                                   data, "--target", "y", "--json", files["arch"]], "--json"),
        "json via another path": (adapt + ["--json", d / "." / "d.csv"], "--json"),
        "json is a folder": (adapt + ["--json", d], "folder"),
        "predictions is a folder": (adapt + ["--predictions", d], "folder"),
        "json and predictions the same": (adapt + ["--json", d / "o.txt", "--predictions", d / "o.txt"], "both"),
        "predict json is the onnx": (["predict", "--onnx", onnx_file, "--data", data, "--json", onnx_file], "--json"),
        "predict json is the data": (["predict", "--onnx", onnx_file, "--data", data, "--json", data], "--json"),
        "export onnx is the data": (export + ["--onnx", data], "--onnx"),
        "export onnx is the model": (export + ["--onnx", files["script"]], "--onnx"),
        "export native is the data": (export + ["--native", data], "--native"),
        "export onnx is a folder": (export + ["--onnx", d], "folder"),
    }


OUTPUT_IDS = ["predictions is the data", "json is the data", "json is the model", "json is the arch file",
              "json via another path", "json is a folder", "predictions is a folder", "json and predictions the same",
              "predict json is the onnx", "predict json is the data", "export onnx is the data",
              "export onnx is the model", "export native is the data", "export onnx is a folder"]


@pytest.mark.parametrize("name", OUTPUT_IDS)
def test_output_that_is_an_input_is_refused_before_the_run(files, onnx_file, capsys, name):
    argv, phrase = _outputs(files, onnx_file)[name]
    inputs = (files["data"], files["weights"], files["arch"], files["script"], onnx_file)
    assert_cli_refuses(argv, capsys, files["dir"], phrase, inputs=inputs)


def test_symlink_output_onto_an_input_is_refused(files, capsys):
    link = files["dir"] / "out.csv"
    link.symlink_to(files["data"])
    argv = ["adapt", *files["model_args"], "--data", files["data"], "--target", "y", "--predictions", link]
    assert_cli_refuses(argv, capsys, files["dir"], "--predictions", inputs=(files["data"],))


def test_failed_run_leaves_no_output(files, capsys):
    bad = files["dir"] / "bad.csv"
    bad.write_text("a,b,c,y\n1,2,3,1\n4,5,6,nan\n7,8,9,2\n")
    argv = ["adapt", *files["model_args"], "--data", bad, "--target", "y",
            "--json", files["dir"] / "m.json", "--predictions", files["dir"] / "p.csv"]
    assert_cli_refuses(argv, capsys, files["dir"], "bad.csv", inputs=(bad,))


def test_outputs_are_committed_together_or_not_at_all(tmp_path):
    first, second = tmp_path / "a.json", tmp_path / "b.json"
    with pytest.raises(RuntimeError), output.committed_together():
        output.write_json(first, {"a": 1})
        assert not first.exists()  # staged, not yet in place
        raise RuntimeError("the run failed after writing one output")
    assert listing(tmp_path) == set()
    with output.committed_together():
        output.write_json(first, {"a": 1})
        output.write_json(second, {"b": 2})
    assert json.loads(first.read_text()) == {"a": 1} and json.loads(second.read_text()) == {"b": 2}


def test_failed_run_restores_an_output_written_by_other_code(tmp_path):
    onnx = tmp_path / "model.onnx"
    onnx.write_bytes(b"previous export")
    with pytest.raises(ValueError), output.committed_together([("onnx", onnx)]):
        onnx.write_bytes(b"half of a new export")
        raise ValueError("verification failed")
    assert onnx.read_bytes() == b"previous export" and listing(tmp_path) == {"model.onnx"}


@pytest.mark.parametrize("where", ["under a file", "too long a name"])
def test_error_names_the_users_path_not_a_temporary_file(tmp_path, where):
    blocker = tmp_path / "plain.txt"
    blocker.write_text("not a folder")
    target = blocker / "m.json" if where == "under a file" else tmp_path / ("x" * 300 + ".json")
    with pytest.raises(output.OutputError) as info:
        output.write_json(target, {})
    message = str(info.value)
    assert str(target) in message and ".tmp" not in message.replace(str(target), "")
    assert listing(tmp_path) == {"plain.txt"}


# ---------------------------------------------------------------- predict

def _write(path: Path, data: bytes | str) -> Path:
    if isinstance(data, str):
        path.write_text(data)
    else:
        path.write_bytes(data)
    return path


def _npy(d: Path, name: str, array) -> Path:
    path = d / name
    np.save(path, array, allow_pickle=array.dtype == object)
    return path


def _npz(d: Path, name: str, **arrays) -> Path:
    path = d / name
    np.savez(path, **arrays)
    return path


def _crc_npz(d: Path) -> Path:
    path = _npz(d, "crc.npz", X=np.arange(30.0).reshape(10, 3))
    data = bytearray(path.read_bytes())
    data[data.index(b"X.npy") + 150] ^= 0xFF
    path.write_bytes(bytes(data))
    return path


PREDICT_DATA = {
    "nan rows": (lambda d: _npy(d, "x.npy", np.array([[1.0, np.nan, 2.0], [1, 2, 3]])), "NaN"),
    "inf rows": (lambda d: _npy(d, "x.npy", np.array([[1.0, np.inf, 2.0]])), "infinite"),
    "complex": (lambda d: _npy(d, "x.npy", np.ones((2, 3)) * (1 + 1j)), "complex"),
    "strings": (lambda d: _npy(d, "x.npy", np.array([["a", "b", "c"]])), "not numbers"),
    "object npz": (lambda d: _npz(d, "x.npz", X=np.array([[{}, None, 1]], dtype=object)), "pickle"),
    "object npy": (lambda d: _npy(d, "x.npy", np.array([[{}, None, 1]], dtype=object)), "pickle"),
    "bad crc npz": (_crc_npz, "crc.npz"),
    "empty npy file": (lambda d: _write(d / "e.npy", b""), "e.npy"),
    "zero rows": (lambda d: _npy(d, "x.npy", np.zeros((0, 3))), "no rows"),
    "npz without X": (lambda d: _npz(d, "x.npz", A=np.zeros((2, 3))), "'X'"),
    "wrong width": (lambda d: _npy(d, "x.npy", np.zeros((2, 5))), "expects [3]"),
    "3-d array": (lambda d: _npy(d, "x.npy", np.zeros((2, 3, 1))), "expects [3]"),
    "scalar npy": (lambda d: _npy(d, "x.npy", np.array(3.0)), "no rows"),
    "garbage npy": (lambda d: _write(d / "g.npy", b"\x93NUMPY garbage"), "g.npy"),
    "csv nan": (lambda d: _write(d / "t.csv", "a,b,c\n1,nan,3\n"), "missing"),
    "csv inf": (lambda d: _write(d / "t.csv", "a,b,c\n1,inf,3\n"), "infinite"),
    "csv missing column": (lambda d: _write(d / "t.csv", "a,b\n1,2\n"), "'c'"),
    "csv text": (lambda d: _write(d / "t.csv", "a,b,c\n1,2,x\n"), "not numeric"),
    "fifo csv": (lambda d: make_fifo(d / "f.csv"), "named pipe"),
    "dev zero npy": (lambda d: (d / "z.npy").symlink_to("/dev/zero") or d / "z.npy", "character device"),
    "image folder for a table model": (lambda d: (d / "imgs").mkdir() or d / "imgs", "not images"),
    "unknown suffix": (lambda d: _write(d / "x.parquet", b"PAR1"), "x.parquet"),
}


@pytest.mark.parametrize("case", list(PREDICT_DATA.values()), ids=list(PREDICT_DATA))
def test_predict_refuses_bad_rows_by_name(tmp_path, onnx_file, capsys, case):
    make, phrase = case
    data = make(tmp_path)
    assert_cli_refuses(["predict", "--onnx", onnx_file, "--data", data, "--json", tmp_path / "out.json"], capsys,
                       tmp_path, phrase, inputs=(onnx_file, data))


TAMPERED = {
    "input not json": ({"input": "{nope"}, "ntk_studio.input"),
    "input deep json": ({"input": "[" * 10_000}, "ntk_studio.input"),
    "shape huge": ({"input": json.dumps({"dtype": "float64", "shape": ["batch", 10**6, 10**6]})}, "larger"),
    "shape negative": ({"input": json.dumps({"dtype": "float64", "shape": ["batch", -3]})}, "positive"),
    "shape bool": ({"input": json.dumps({"dtype": "float64", "shape": ["batch", True]})}, "positive"),
    "shape text": ({"input": json.dumps({"dtype": "float64", "shape": "batch,3"})}, "'shape' list"),
    "dtype bogus": ({"input": json.dumps({"dtype": "object", "shape": ["batch", 3]})}, "dtype"),
    "input a list": ({"input": "[1, 2]"}, "'shape' list"),
    "feature names not a list": ({"feature_names": '"abc"'}, "feature_names"),
    "feature names numbers": ({"feature_names": "[1, 2, 3]"}, "feature_names"),
    "class names bad json": ({"class_names": "{"}, "class_names"),
    "no task": ({"task": None}, "not written by NTK Studio"),
}


@pytest.mark.parametrize("case", list(TAMPERED.values()), ids=list(TAMPERED))
def test_tampered_onnx_metadata_is_refused(tmp_path, files, capsys, case):
    change, phrase = case
    meta = {k: v for k, v in {**GOOD_META, **change}.items() if v is not None}
    onnx_file = _onnx(tmp_path / "t.onnx", meta, width=3)
    assert_cli_refuses(["predict", "--onnx", onnx_file, "--data", files["data"]], capsys, tmp_path, phrase,
                       inputs=(onnx_file, files["data"]))


ONNX_FILES = {
    "garbage": lambda d: _write(d / "g.onnx", os.urandom(512)),
    "empty": lambda d: _write(d / "e.onnx", b""),
    "fifo": lambda d: make_fifo(d / "f.onnx"),
    "dev zero": lambda d: (d / "z.onnx").symlink_to("/dev/zero") or d / "z.onnx",
    "missing": lambda d: d / "missing.onnx",
    "folder": lambda d: (d / "dir.onnx").mkdir() or d / "dir.onnx",
}


@pytest.mark.parametrize("make", list(ONNX_FILES.values()), ids=list(ONNX_FILES))
def test_predict_refuses_unreadable_onnx_files(tmp_path, files, capsys, make):
    path = make(tmp_path)
    assert_cli_refuses(["predict", "--onnx", path, "--data", files["data"]], capsys, tmp_path, inputs=(files["data"],))


# ---------------------------------------------------------------- models and architecture code

def _arch(d: Path, body: str) -> str:
    (d / "user_arch.py").write_text("import os, sys, torch\n" + body)
    return f"{d / 'user_arch.py'}:make"


MODELS = {
    "pickled payload": (lambda d: ["--model", pickle_payload(d / "evil.pt", d / "pwned")], "--trust-pickle"),
    "pickled payload .pkl": (lambda d: ["--model", pickle_payload(d / "evil.pkl", d / "pwned")], "--trust-pickle"),
    "fifo model": (lambda d: ["--model", make_fifo(d / "m.pt")], "named pipe"),
    "dev zero model": (lambda d: ["--model", (d / "z.pt").symlink_to("/dev/zero") or d / "z.pt"], "character device"),
    "random bytes": (lambda d: ["--model", _write(d / "r.pt", os.urandom(300))], "r.pt"),
    "truncated zip": (lambda d: ["--model", _write(d / "t.pt", b"PK\x03\x04" + b"\x00" * 40)],
                      "t.pt"),
    "folder model": (lambda d: ["--model", (d / "dir.pt").mkdir() or d / "dir.pt"], "folder"),
    "arch fifo": (lambda d: ["--arch", f"{make_fifo(d / 'a.py')}:make"], "named pipe"),
    "arch os._exit": (lambda d: ["--arch", _arch(d, "def make():\n    os._exit(0)\n")], "ended its process"),
    "arch hangs": (lambda d: ["--arch", _arch(d, "def make():\n    while True:\n        pass\n"), "--arch-timeout", "4"],
                   "did not finish within 4 s"),
}


ISOLATED = ("arch os._exit", "arch hangs")  # each runs a child process (the isolated first run)


@pytest.mark.parametrize("case", [pytest.param(v, marks=pytest.mark.slow) if k in ISOLATED else v
                                  for k, v in MODELS.items()], ids=list(MODELS))
def test_bad_model_or_architecture(files, capsys, case):
    make, phrase = case
    d = files["dir"]
    extra = make(d)
    argv = ["inspect", "--model", files["weights"], "--arch", f"{files['arch']}:make", "--input-shape", "3"]
    for flag in ("--model", "--arch"):  # the case replaces the file it is about
        if flag in extra:
            i = argv.index(flag)
            del argv[i:i + 2]
    argv += [str(a) for a in extra]
    assert_cli_refuses(argv, capsys, d, phrase, inputs=(files["weights"], files["arch"]))
    assert not (d / "pwned").exists()


ARCH_FILES = {
    "raises": ("def make():\n    raise RuntimeError('nope')\n", "make", "nope"),
    "returns int": ("def make():\n    return 3\n", "make", "not a torch.nn.Module"),
    "syntax error": ("def make(:\n", "make", "syntax"),
    "imports missing": ("import no_such_module_xyz\n", "make", "no_such_module_xyz"),
    "no factory": ("X = 1\n", "build", "no 'build'"),
    "needs arguments": ("def make(width):\n    return torch.nn.Linear(width, 1)\n", "make", "no arguments"),
    "factory not callable": ("make = 3\n", "make", "not a function"),
    "sys.exit at import": ("sys.exit(3)\n", "make", "SystemExit"),
    "sys.exit in the factory": ("def make():\n    sys.exit(0)\n", "make", "SystemExit"),
}


@pytest.mark.parametrize("case", list(ARCH_FILES.values()), ids=list(ARCH_FILES))
def test_bad_architecture_file_in_process(tmp_path, case):
    """Failures that raise (rather than hang or end the process) need no child process to be caught."""
    from ntk_studio.core.errors import ModelLoadError
    from ntk_studio.core.models import load_architecture
    from test_hostile_support import refused

    body, factory, phrase = case
    spec = _arch(tmp_path, body).replace(":make", f":{factory}")
    with refused(ModelLoadError, phrase, inputs=(tmp_path / "user_arch.py",)):
        load_architecture(spec)


def test_export_of_a_model_whose_width_does_not_match_the_data(files, capsys):
    wide = files["dir"] / "wide.csv"
    wide.write_text("a,b,c,d,e,y\n" + "1,2,3,4,5,6\n" * 20)
    argv = ["export", *files["model_args"], "--data", wide, "--target", "y", "--onnx", files["dir"] / "o.onnx"]
    assert_cli_refuses(argv, capsys, files["dir"], "3 input features", inputs=(wide,))


# ---------------------------------------------------------------- a few as real processes

REAL = {
    "threads 100000": lambda f: ["adapt", "--example", "sine", "--threads", "100000"],
    "pickle without the flag": lambda f: ["inspect", "--model", pickle_payload(f["dir"] / "e.pt", f["dir"] / "pwned")],
    "predict on a fifo": lambda f: ["predict", "--onnx", _onnx(f["dir"] / "m.onnx", GOOD_META, 3), "--data",
                                    make_fifo(f["dir"] / "pipe.csv")],
}


@pytest.mark.slow
@pytest.mark.parametrize("make", list(REAL.values()), ids=list(REAL))
def test_real_cli_process(files, make):
    argv = [str(a) for a in make(files)]
    before, names = snapshot(files["data"], files["weights"]), listing(files["dir"])
    start = time.monotonic()
    done = subprocess.run([sys.executable, "-m", "ntk_studio.cli.main", *argv], capture_output=True, text=True,
                          timeout=120, stdin=subprocess.DEVNULL)
    assert done.returncode == EXIT_USER_ERROR, (done.returncode, done.stderr[-2000:])
    errors = [ln for ln in done.stderr.splitlines() if "error:" in ln]
    assert len(errors) == 1 and "Traceback" not in done.stderr, done.stderr
    assert snapshot(files["data"], files["weights"]) == before and listing(files["dir"]) == names
    assert not (files["dir"] / "pwned").exists()
    assert time.monotonic() - start < 120 + CASE_SECONDS


def test_project_files_are_not_cli_inputs_that_run_code(tmp_path):
    """A project zip handed to the CLI as a model is refused as not a model (nothing in it runs)."""
    proj = tmp_path / "p.pt"
    with zipfile.ZipFile(proj, "w") as zf:
        zf.writestr("project.json", "{}")
    from ntk_studio.core.errors import ModelLoadError
    from ntk_studio.core.models import load_model

    with pytest.raises(ModelLoadError, match="not a PyTorch model"):
        load_model(proj)
