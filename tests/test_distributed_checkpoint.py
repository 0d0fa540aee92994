"""Checkpointed CG (dense float64 reference), kill-and-resume in one process, checkpoint files, shard basics."""

import pytest
import torch

from models import mlp
from ntk_studio.core import LinearizedGP
from ntk_studio.core.checkpoint import MAX_ENTRIES, Checkpoint, resumable_cg
from ntk_studio.core.distributed import SINGLE_PROCESS, TorchDistributed, block, init_distributed
from ntk_studio.core.errors import CheckpointError, DistributedError

TOL = 1e-12


class Killed(Exception):
    """Stands in for a process dying in the middle of a product."""


def spd(n: int = 30, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    A = torch.randn(n, n, generator=g, dtype=torch.float64)
    return A @ A.T + 0.5 * torch.eye(n, dtype=torch.float64)


def counting(A: torch.Tensor, die_at: int | None = None):
    calls = [0]

    def matmul(v):
        calls[0] += 1
        if die_at is not None and calls[0] == die_at:
            raise Killed
        return A @ v

    return matmul, calls


@pytest.mark.parametrize("jacobi", [False, True])
def test_resumable_cg_matches_a_dense_solve(jacobi):
    A = spd()
    B = torch.randn(30, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    d = A.diagonal().unsqueeze(-1)
    x, converged, it = resumable_cg(lambda v: A @ v, B, TOL, 500, precond=(lambda r: r / d) if jacobi else None)
    ref = torch.linalg.solve(A, B)
    assert converged and 0 < it <= 500
    assert float((x - ref).norm() / ref.norm()) < 1e-9
    assert float(((A @ x - B).norm(dim=0) / B.norm(dim=0)).max()) <= TOL


def test_killed_cg_resumes_the_same_iteration_and_answer(tmp_path):
    A, b = spd(), torch.ones(30, 1, dtype=torch.float64)
    full, calls_full = counting(A)
    x_ref, _, it_ref = resumable_cg(full, b, TOL, 500)
    path = tmp_path / "cg.ckpt"
    dying, _ = counting(A, die_at=8)
    with pytest.raises(Killed):
        resumable_cg(dying, b, TOL, 500, checkpoint=Checkpoint(path, interval_s=0.0), key="k")
    ckpt = Checkpoint(path)
    rest, calls_rest = counting(A)
    x, converged, it = resumable_cg(rest, b, TOL, 500, checkpoint=ckpt, key="k")
    assert ckpt.resumed == {"cg": 7}
    assert converged and it == it_ref
    assert calls_rest[0] == calls_full[0] - 7
    assert torch.equal(x, x_ref)  # the same iteration continued: bit for bit
    assert not list(tmp_path.glob(".*.tmp"))  # atomic writes leave no temporaries


def test_gp_function_space_cg_resumes_after_a_kill(tmp_path):
    g = torch.Generator().manual_seed(4)
    X = torch.randn(30, 3, generator=g, dtype=torch.float64)
    y = torch.sin(X[:, 0]) + 0.1 * X[:, 2]
    Xs = torch.randn(6, 3, generator=g, dtype=torch.float64)
    # memory_budget=1: products stay matrix-free (through kernel_matmul, which the kill counts) instead of
    # one matrix product with the kernel the CG route stores when it fits the budget.
    kw = dict(prior_var=0.5, noise=0.05, space="function", solver="cg", cg_tol=TOL, precond_rank=4, memory_budget=1)
    fresh = LinearizedGP(mlp(0), checkpoint=tmp_path / "fresh.ckpt", **kw).fit(X, y)
    path = tmp_path / "killed.ckpt"
    dying = LinearizedGP(mlp(0), checkpoint=Checkpoint(path, interval_s=0.0), **kw)
    inner, calls = dying.lm.kernel_matmul, [0]

    def die_on_sixth(*a, **k):
        calls[0] += 1
        if calls[0] == 6:
            raise Killed
        return inner(*a, **k)

    dying.lm.kernel_matmul = die_on_sixth
    with pytest.raises(Killed):
        dying.fit(X, y)
    # The preconditioner's kernel rows come first; the CG products after them were checkpointed.
    ckpt = Checkpoint(path)
    resumed = LinearizedGP(mlp(0), checkpoint=ckpt, **kw).fit(X, y)
    done = ckpt.resumed["cg"]
    assert done > 0
    assert resumed.solve_info.products == fresh.solve_info.products - done
    rel = float((resumed.predict_mean(Xs) - fresh.predict_mean(Xs)).abs().max() / fresh.predict_mean(Xs).abs().max())
    assert rel <= 1e-10
    # Δθ of the finished solve is in the checkpoint too.
    saved = [v for k, v in Checkpoint(path)._entries.items() if k.startswith("delta_theta:")]
    assert len(saved) == 1 and torch.allclose(saved[0]["delta_theta"], resumed.delta_theta, rtol=0, atol=0)


def test_a_checkpoint_of_another_problem_is_not_resumed(tmp_path):
    X = torch.randn(12, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    y = X[:, 0] ** 2
    path = tmp_path / "c.ckpt"
    kw = dict(space="weight", solver="cg", cg_tol=TOL)
    LinearizedGP(mlp(0), noise=0.1, checkpoint=path, **kw).fit(X, y)
    other = Checkpoint(path)
    gp = LinearizedGP(mlp(0), noise=0.2, checkpoint=other, **kw).fit(X, y)
    assert other.resumed == {}
    ref = LinearizedGP(mlp(0), noise=0.2, **kw).fit(X, y)
    assert torch.allclose(gp.delta_theta, ref.delta_theta, rtol=1e-8, atol=1e-10)


def test_checkpoint_files_bad_content_non_writers_and_entry_cap(tmp_path):
    bad = tmp_path / "bad.ckpt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="Delete it"):
        Checkpoint(bad)
    foreign = tmp_path / "foreign.ckpt"
    torch.save({"version": 99, "entries": {}}, foreign)
    with pytest.raises(CheckpointError, match="version"):
        Checkpoint(foreign)
    silent = Checkpoint(tmp_path / "rank1.ckpt", interval_s=0.0, writer=False)
    silent.save("cg", "k", {"x": torch.ones(2)})
    assert not (tmp_path / "rank1.ckpt").exists()
    many = Checkpoint(tmp_path / "many.ckpt", interval_s=0.0)
    for i in range(MAX_ENTRIES + 3):
        many.save("cg", str(i), {"iteration": i})
    kept = Checkpoint(tmp_path / "many.ckpt")._entries
    assert list(kept) == [f"cg:{i}" for i in range(3, MAX_ENTRIES + 3)]


@pytest.mark.parametrize("n", [0, 1, 5, 23, 64])
@pytest.mark.parametrize("world", [1, 2, 3, 8])
def test_blocks_partition_the_rows(n, world):
    blocks = [block(n, r, world) for r in range(world)]
    assert [i for s in blocks for i in range(s.start, s.stop)] == list(range(n))
    sizes = [s.stop - s.start for s in blocks]
    assert max(sizes) - min(sizes) <= 1


def test_single_process_shard_is_the_identity():
    t = torch.arange(6.0).reshape(3, 2)
    assert SINGLE_PROCESS.rows(7) == slice(0, 7) and SINGLE_PROCESS.world_size == 1
    assert SINGLE_PROCESS.all_reduce(t) is t and SINGLE_PROCESS.gather_rows(t, 3) is t


def test_distributed_setup_errors_are_typed(monkeypatch):
    monkeypatch.delenv("RANK", raising=False)
    with pytest.raises(DistributedError, match="torchrun"):
        init_distributed()
    with pytest.raises(DistributedError, match="backend"):
        init_distributed(backend="mpi")
    with pytest.raises(DistributedError, match="init_distributed"):
        TorchDistributed()
