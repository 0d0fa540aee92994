"""Tests for the built-in sine transfer example: shipped weights, training script, target data."""

from __future__ import annotations

import math

import pytest
import torch
from safetensors import safe_open

from ntk_studio.core.examples.sine import (
    INPUT_RANGE,
    SOURCE_TASKS,
    TARGET_TASK,
    WEIGHTS_PATH,
    SineTask,
    build_sine_mlp,
    load_pretrained_sine,
    target_task_data,
)
from ntk_studio.core.examples.train_sine import train

GRID_POINTS = 1000
FIT_RMSE = 0.05
MISFIT_RMSE = 0.5
QUICK_STEPS = 50
TRAIN_RANGE = (-4.0, 1.0)


def _grid(dtype: torch.dtype = torch.float32) -> torch.Tensor:
    return torch.linspace(*INPUT_RANGE, GRID_POINTS, dtype=dtype).unsqueeze(-1)


def _rmse(model: torch.nn.Module, task: SineTask) -> float:
    x = _grid()
    with torch.no_grad():
        error = model(x)[:, 0] - task(x[:, 0])
    return error.pow(2).mean().sqrt().item()


def test_build_sine_mlp_architecture():
    model = build_sine_mlp()
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert shapes == {
        "0.weight": (40, 1),
        "0.bias": (40,),
        "2.weight": (40, 40),
        "2.bias": (40,),
        "4.weight": (1, 40),
        "4.bias": (1,),
    }
    assert all(p.dtype == torch.float32 for p in model.parameters())


def test_shipped_weights_load_strictly_with_metadata():
    assert WEIGHTS_PATH.is_file()
    with safe_open(str(WEIGHTS_PATH), framework="pt") as f:
        assert set(f.keys()) == set(build_sine_mlp().state_dict())
        assert all(f.get_tensor(k).dtype == torch.float32 for k in f.keys())
        metadata = f.metadata()
    assert {"seed", "steps"} <= metadata.keys()
    rmses = [float(metadata[f"rmse_task_{i}"]) for i in range(len(SOURCE_TASKS))]
    assert max(rmses) < FIT_RMSE

    model = load_pretrained_sine()
    assert not model.training


def test_pretrained_fits_source_task_zero():
    assert SOURCE_TASKS[0] == SineTask(amplitude=1.0, phase=0.0)
    assert _rmse(load_pretrained_sine(), SOURCE_TASKS[0]) < FIT_RMSE


def test_pretrained_does_not_fit_target_task():
    assert TARGET_TASK not in SOURCE_TASKS
    assert _rmse(load_pretrained_sine(), TARGET_TASK) > MISFIT_RMSE


def test_source_tasks_in_documented_ranges():
    assert len(SOURCE_TASKS) == 8
    assert len(set(SOURCE_TASKS)) == 8
    for task in SOURCE_TASKS:
        assert 0.5 <= task.amplitude <= 2.0
        assert 0.0 <= task.phase <= math.pi


def test_sine_task_values():
    task = SineTask(amplitude=2.0, phase=0.5)
    x = torch.tensor([0.0, 1.0], dtype=torch.float64)
    expected = torch.tensor([2.0 * math.sin(0.5), 2.0 * math.sin(1.5)], dtype=torch.float64)
    torch.testing.assert_close(task(x), expected)


def _assert_state_dicts_equal(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


def test_train_is_reproducible_and_seed_dependent():
    global_state = torch.get_rng_state()
    threads = torch.get_num_threads()
    deterministic = torch.are_deterministic_algorithms_enabled()
    model_a, metrics_a = train(steps=QUICK_STEPS, seed=3)
    model_b, metrics_b = train(steps=QUICK_STEPS, seed=3)
    model_c, _ = train(steps=QUICK_STEPS, seed=4)
    # Training must not leak into the caller's global RNG.
    assert torch.equal(torch.get_rng_state(), global_state)
    assert torch.get_num_threads() == threads
    assert torch.are_deterministic_algorithms_enabled() == deterministic

    _assert_state_dicts_equal(model_a.state_dict(), model_b.state_dict())
    assert metrics_a == metrics_b
    assert metrics_a["steps"] == QUICK_STEPS and metrics_a["seed"] == 3
    assert len(metrics_a["rmse"]) == len(SOURCE_TASKS)
    assert all(math.isfinite(r) for r in metrics_a["rmse"])
    assert model_a.state_dict().keys() == build_sine_mlp().state_dict().keys()

    different = [
        not torch.equal(model_a.state_dict()[k], model_c.state_dict()[k])
        for k in model_a.state_dict()
    ]
    assert all(different)


def test_target_task_data_deterministic_and_shaped():
    a = target_task_data(seed=7)
    b = target_task_data(seed=7)
    c = target_task_data(seed=8)
    for name in ("x_train", "y_train", "x_test", "y_test", "x_grid", "y_grid_true"):
        assert torch.equal(getattr(a, name), getattr(b, name)), name
    assert not torch.equal(a.x_train, c.x_train)

    assert a.x_train.shape == (10, 1) and a.y_train.shape == (10,)
    assert a.x_test.shape == (200, 1) and a.y_test.shape == (200,)
    assert a.x_grid.shape == (400, 1) and a.y_grid_true.shape == (400,)
    for name in ("x_train", "y_train", "x_test", "y_test", "x_grid", "y_grid_true"):
        assert getattr(a, name).dtype == torch.float64, name
    assert a.noise_std == 0.1

    assert a.x_grid[0, 0].item() == INPUT_RANGE[0]
    assert a.x_grid[-1, 0].item() == INPUT_RANGE[1]
    torch.testing.assert_close(a.y_grid_true, TARGET_TASK(a.x_grid[:, 0]))
    assert a.x_test.min() >= INPUT_RANGE[0] and a.x_test.max() <= INPUT_RANGE[1]

    f32 = target_task_data(dtype=torch.float32)
    assert f32.x_train.dtype == torch.float32 and f32.y_test.dtype == torch.float32


def test_target_task_data_leaves_global_rng_alone():
    state = torch.get_rng_state()
    target_task_data(seed=1)
    assert torch.equal(torch.get_rng_state(), state)


def test_target_task_data_train_range_and_noise():
    noise_std = 0.1
    data = target_task_data(n_train=2000, noise_std=noise_std, seed=0, train_range=TRAIN_RANGE)
    assert data.x_train.min() >= TRAIN_RANGE[0]
    assert data.x_train.max() <= TRAIN_RANGE[1]

    residual = data.y_train - TARGET_TASK(data.x_train[:, 0])
    assert residual.std().item() == pytest.approx(noise_std, rel=0.1)
    assert abs(residual.mean().item()) < 3 * noise_std / math.sqrt(2000)


def test_target_task_data_noise_free():
    data = target_task_data(noise_std=0.0)
    torch.testing.assert_close(data.y_train, TARGET_TASK(data.x_train[:, 0]))
    torch.testing.assert_close(data.y_test, TARGET_TASK(data.x_test[:, 0]))
