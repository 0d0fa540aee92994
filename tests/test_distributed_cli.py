"""`adapt --distributed` under torchrun (2 gloo ranks) against one process; `--checkpoint` resumes."""

import json
import os
import subprocess
import sys

from ntk_studio.cli.commands import adapt as cli_adapt
from ntk_studio.cli.main import main
from ntk_studio.core import checkpoint, distributed

TORCHRUN_TIMEOUT_S = 180.0  # two interpreters importing torch on two shared cores, then the fit
# One process may solve through the factored stored kernel (exact), two ranks by matrix-free CG to the
# engine's cg_tol = 1e-8: the two agree to that tolerance, not to rounding.
REL_TOL = 1e-8
# --no-fit-hyper: the CG route's evidence fit is stochastic; these tests compare the solve itself.
ARGS = ["adapt", "--example", "sine", "--space", "function", "--solver", "cg", "--no-fit-hyper", "--quiet"]


def test_cli_defaults_mirror_the_engine():
    assert cli_adapt.DIST_BACKENDS == distributed.BACKENDS
    assert cli_adapt.DEFAULT_DIST_TIMEOUT_S == distributed.DEFAULT_TIMEOUT_S
    assert cli_adapt.DEFAULT_CHECKPOINT_INTERVAL_S == checkpoint.DEFAULT_INTERVAL_S


def test_distributed_without_torchrun_is_a_clear_error(capsys):
    assert main([*ARGS, "--distributed"]) == 2
    err = capsys.readouterr().err
    assert "torchrun --nproc-per-node" in err and "Traceback" not in err


def test_torchrun_two_ranks_match_one_process_and_only_rank0_writes(tmp_path, capsys):
    single = tmp_path / "single.json"
    assert main([*ARGS, "--json", str(single)]) == 0
    capsys.readouterr()
    out = tmp_path / "two.json"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
         "-m", "ntk_studio.cli", *ARGS, "--distributed", "--dist-backend", "gloo", "--dist-timeout", "60",
         "--json", str(out)],
        capture_output=True, text=True, timeout=TORCHRUN_TIMEOUT_S, env=env, cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.count("distributed: 2 ranks (gloo)") == 1  # rank 0 only
    assert proc.stdout.count("metrics written to") == 1
    a, b = json.loads(single.read_text()), json.loads(out.read_text())
    assert (a["gp"]["ranks"], b["gp"]["ranks"]) == (1, 2)
    for key in ("rmse", "mae", "nll", "coverage95"):
        ref = a["metrics"]["gp"][key]
        assert abs(b["metrics"]["gp"][key] - ref) <= REL_TOL * abs(ref), key
    assert b["gp"]["residual"] < 1e-7


def test_checkpoint_option_resumes_a_finished_solve(tmp_path, capsys):
    ckpt = tmp_path / "adapt.ckpt"
    args = [*ARGS, "--checkpoint", str(ckpt), "--checkpoint-interval", "0", "--json"]
    assert main([*args, str(tmp_path / "a.json")]) == 0
    first = capsys.readouterr().out
    assert ckpt.exists() and "resumed" not in first
    assert main([*args, str(tmp_path / "b.json")]) == 0
    assert "resumed the solve from" in capsys.readouterr().out
    a, b = (json.loads((tmp_path / f).read_text()) for f in ("a.json", "b.json"))
    assert a["metrics"]["gp"]["rmse"] == b["metrics"]["gp"]["rmse"]
