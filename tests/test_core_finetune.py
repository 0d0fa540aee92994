"""The fine-tuning baseline: convergence, early stopping, subset-only updates, determinism, cancel, ensembles."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from models import cnn, inputs
from ntk_studio.core import Cancelled, CancelToken, ShapeError, SolverError
from ntk_studio.core.data.dataset import Dataset
from ntk_studio.core.finetune import (
    EpochEvent,
    FineTuneSettings,
    FineTuneSettingsError,
    evaluate,
    finetune,
    finetune_ensemble,
    finetune_iter,
    predict,
)


def sine_net(seed=0, width=24):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(1, width), nn.Tanh(), nn.Linear(width, width), nn.Tanh(), nn.Linear(width, 1))


def toy(n=40, seed=0, noise=0.05, lo=-1.0, hi=1.0):
    g = torch.Generator().manual_seed(seed)
    X = torch.rand(n, 1, generator=g, dtype=torch.float64) * (hi - lo) + lo
    y = torch.sin(3 * X[:, 0]) + noise * torch.randn(n, generator=g, dtype=torch.float64)
    return Dataset(X, y, ("x",), "y")


def blobs(n=150, seed=0):
    g = torch.Generator().manual_seed(seed)
    centers = torch.tensor([[2.0, 0.0], [-1.0, 1.7], [-1.0, -1.7]], dtype=torch.float64)
    y = torch.arange(n) % 3
    X = centers[y] + 0.5 * torch.randn(n, 2, generator=g, dtype=torch.float64)
    return Dataset(X, y, ("a", "b"), "class", class_names=("p", "q", "r"))


FAST = FineTuneSettings(lr=1e-2, epochs=60, batch_size=16)


def test_loss_decreases_on_toy_regression_and_events_are_per_epoch():
    grid = torch.linspace(-2, 2, 25, dtype=torch.float64)[:, None]
    events = []
    gen = finetune_iter(sine_net(), toy(), toy(20, seed=1), FAST, grid=grid)
    with pytest.raises(StopIteration) as stop:
        while True:
            events.append(next(gen))
    result = stop.value.value
    assert [e.epoch for e in events] == list(range(len(events))) and all(isinstance(e, EpochEvent) for e in events)
    assert events[0].step == 0 and events[-1].step == events[-1].epoch * math.ceil(40 / 16)
    first, last = events[0].train_loss, events[-1].train_loss
    assert last < 0.1 * first, (first, last)
    assert events[-1].grid_pred.shape == (25,) and events[-1].grid_pred.dtype == np.float32
    assert set(events[-1].val_metrics) == {"mse", "rmse"}
    assert events[-1].elapsed >= events[1].elapsed > 0
    assert result.history == events and result.wall_time > 0
    assert predict(result, grid).shape == (25,)


def test_early_stopping_restores_the_best_weights():
    # 8 noisy points, a big learning rate: the network overfits and the validation loss turns up.
    train, val = toy(8, seed=2, noise=0.4), toy(60, seed=3, noise=0.0)
    s = FineTuneSettings(lr=3e-2, epochs=400, batch_size=8, patience=15)
    result = finetune(sine_net(), train, val, s)
    val_losses = [e.val_loss for e in result.history]
    assert result.stopped_early and len(result.history) < s.epochs + 1
    assert result.best_epoch == int(np.argmin(val_losses))
    assert len(result.history) - 1 - result.best_epoch == s.patience
    loss, metrics = evaluate(result, val)
    assert loss == val_losses[result.best_epoch]  # bitwise: the same weights, the same computation
    with torch.no_grad():
        direct = F.mse_loss(result.model(val.X.float())[:, 0], val.y.float())
    assert float(direct) == pytest.approx(loss, rel=1e-6)
    assert metrics["rmse"] == pytest.approx(math.sqrt(loss))
    assert not result.model.training


def test_only_the_chosen_subset_changes_and_batchnorm_stays_frozen():
    model = cnn(seed=0)
    X = inputs("cnn", 24, seed=1)
    y = torch.randn(24, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    result = finetune(model, (X, y), None, FineTuneSettings(params="head", epochs=5, lr=1e-2, dtype=torch.float64))
    after = result.model.state_dict()
    for name, value in before.items():
        if name.startswith("head."):
            assert not torch.equal(after[name], value), name
        else:  # conv, BatchNorm affine and BatchNorm running statistics: bitwise unchanged
            assert torch.equal(after[name], value), name


def test_the_users_model_is_untouched():
    model = cnn(seed=0)
    model.train()
    model.conv.weight.requires_grad_(False)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    X = inputs("cnn", 16, seed=1)
    y = torch.randn(16, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    result = finetune(model, (X, y), None, FineTuneSettings(epochs=3, lr=1e-2, dtype=torch.float64))
    assert model.training and not model.conv.weight.requires_grad and model.head.weight.requires_grad
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    tuned = result.model.state()
    assert model.head.weight.dtype == torch.float32 and tuned["head.weight"].dtype == torch.float64
    assert result.model is not model and not tuned["conv.weight"].requires_grad


@pytest.mark.parametrize("optimizer", ["adam", "sgd"])
def test_the_same_seed_gives_the_same_run(optimizer):
    s = FineTuneSettings(optimizer=optimizer, lr=1e-2, epochs=10, batch_size=8, weight_decay=1e-3)
    runs = [finetune(sine_net(), toy(), toy(10, seed=1), s) for _ in range(2)]
    other = finetune(sine_net(), toy(), toy(10, seed=1), FineTuneSettings(**{**s.__dict__, "seed": 1}))
    losses = [[e.train_loss for e in r.history] for r in (*runs, other)]
    assert losses[0] == losses[1] and losses[0] != losses[2]
    for a, b in zip(runs[0].model.parameters(), runs[1].model.parameters()):
        assert torch.equal(a, b)


def test_train_mode_is_deterministic_and_leaves_the_global_rng_alone():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(1, 16), nn.Dropout(0.3), nn.Tanh(), nn.Linear(16, 1))
    s = FineTuneSettings(epochs=5, train_mode=True, lr=1e-2)
    state = torch.get_rng_state()
    a, b = finetune(model, toy(), None, s), finetune(model, toy(), None, s)
    assert torch.equal(torch.get_rng_state(), state)
    assert [e.train_loss for e in a.history] == [e.train_loss for e in b.history]


def test_cancel_between_epochs_and_inside_an_epoch():
    token = CancelToken()
    gen = finetune_iter(sine_net(), toy(), None, FAST, cancel=token)
    next(gen)
    token.cancel()
    with pytest.raises(Cancelled):
        next(gen)

    # A model that cancels its own job on the 3rd forward: the epoch has 40 batches, so only a
    # per-batch check stops it before the epoch ends.
    token, calls = CancelToken(), []

    class Tripwire(nn.Module):
        def __init__(self):
            super().__init__()
            self.net = sine_net()

        def forward(self, x):
            calls.append(len(x))
            if len(calls) == 3:
                token.cancel()
            return self.net(x)

    with pytest.raises(Cancelled):
        finetune(Tripwire(), toy(40), None, FineTuneSettings(batch_size=1, epochs=1), cancel=token)
    assert len(calls) == 3  # epoch 0's evaluation, two batches, then the check before the third batch


def test_classification_reaches_high_accuracy():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(2, 16), nn.Tanh(), nn.Linear(16, 3))
    grid = torch.zeros(7, 2, dtype=torch.float64)
    s = FineTuneSettings(task="classification", lr=1e-2, epochs=40, batch_size=16)
    result = finetune(model, blobs(), blobs(90, seed=1), s, grid=grid)
    assert result.history[-1].val_metrics["accuracy"] >= 0.95
    assert result.history[0].val_metrics["accuracy"] < 0.8
    probs = predict(result, blobs(90, seed=1).X)
    assert probs.shape == (90, 3) and torch.allclose(probs.sum(1), torch.ones(90))
    assert result.history[-1].grid_pred.shape == (7, 3)


def test_ensemble_variance_is_positive_and_grows_away_from_the_data():
    s = FineTuneSettings(lr=1e-2, epochs=100, batch_size=16)
    ens = finetune_ensemble(sine_net(), toy(30, lo=-1, hi=1), None, s, members=4)
    assert len({float(m.history[-1].train_loss) for m in ens.members}) == 4
    near = torch.tensor([[-0.5], [0.0], [0.5]], dtype=torch.float64)
    far = torch.tensor([[-4.0], [4.0], [5.0]], dtype=torch.float64)
    (m_near, v_near), (_, v_far) = ens.predict(near), ens.predict(far)
    assert m_near.shape == v_near.shape == (3,)
    assert (v_near > 0).all() and v_far.mean() > 5 * v_near.mean(), (v_near, v_far)


def test_bad_settings_and_targets_are_typed_errors():
    with pytest.raises(FineTuneSettingsError, match="optimizer"):
        FineTuneSettings(optimizer="lbfgs")
    with pytest.raises(FineTuneSettingsError, match="lr"):
        FineTuneSettings(lr=0)
    with pytest.raises(ShapeError, match="classification"):
        finetune(sine_net(), (toy().X, torch.zeros(40, dtype=torch.long)), None, FAST)
    with pytest.raises(ShapeError, match="outputs"):
        finetune(sine_net(), (toy().X, torch.zeros(40, 2, dtype=torch.float64)), None, FAST)


def test_max_rate_throttles_events_but_keeps_the_full_history():
    gen = finetune_iter(sine_net(), toy(), None, FineTuneSettings(epochs=30, lr=1e-2), max_rate=1e-3)
    events = []
    with pytest.raises(StopIteration) as stop:
        while True:
            events.append(next(gen))
    assert [e.epoch for e in events] == [0, 30] and len(stop.value.value.history) == 31


def test_without_validation_the_last_epoch_is_kept_and_divergence_is_a_solver_error():
    result = finetune(sine_net(), toy(), None, FineTuneSettings(epochs=4, lr=1e-2))
    assert result.best_epoch == 4 and not result.stopped_early and result.history[-1].val_loss is None
    with pytest.raises(SolverError, match="lower lr"):
        finetune(sine_net(), toy(), None, FineTuneSettings(optimizer="sgd", lr=1e6, epochs=20))


def test_classification_ensemble_averages_probabilities():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(2, 8), nn.Tanh(), nn.Linear(8, 3))
    s = FineTuneSettings(task="classification", lr=1e-2, epochs=5)
    probs = finetune_ensemble(model, blobs(60), None, s, members=2).predict(blobs(10, seed=1).X)
    assert probs.shape == (10, 3) and torch.allclose(probs.sum(1), torch.ones(10))
