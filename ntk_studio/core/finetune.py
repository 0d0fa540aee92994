"""The fine-tuning baseline: ordinary gradient training of the same parameter subset the GP linearizes.

The model is fine-tuned in **eval mode** by default (BatchNorm uses its running statistics, which stay
frozen; dropout is off), so fine-tuning searches the same function class the GP linearizes. Pass
``train_mode=True`` for the usual train mode. The user's model is never modified or copied: the
trained weights are a parameter dict applied with ``torch.func.functional_call`` (:class:`TunedModel`),
which works for ordinary modules, TorchScript and torch.export programs alike. Runs are seeded and
deterministic; ``finetune_iter`` yields one :class:`EpochEvent` per epoch (epoch 0 is the starting
model) and checks the cancel token before every batch.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import time
from collections.abc import Generator
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .data.dataset import Dataset
from .errors import FineTuneSettingsError, ShapeError, SolverError
from .params import ParamSpec, ParamSubset
from .progress import CancelToken

OPTIMIZERS = ("adam", "sgd")
TASKS = ("regression", "classification")
EVAL_CHUNK = 4096  # samples per forward pass when evaluating or predicting (bounds memory)
EPOCH_SEED_STRIDE = 1_000_003  # per-epoch dropout seeds in train mode: seed·stride + epoch never collide
DEFAULT_ENSEMBLE_INIT_STD = 0.05  # absolute std of each member's start θ* + N(0, std²): a prior sample


@dataclass(frozen=True)
class FineTuneSettings:
    """Fine-tuning hyperparameters; `params` picks the trained subset ('all', 'last:K', module names).

    `patience` counts epochs without a new best validation loss before stopping (None: never stop
    early). `train_mode=False` keeps BatchNorm statistics frozen and dropout off, as the GP does.
    """

    params: ParamSpec = "all"
    optimizer: str = "adam"
    lr: float = 1e-3
    epochs: int = 200
    batch_size: int = 32
    weight_decay: float = 0.0
    momentum: float = 0.9
    patience: int | None = 20
    seed: int = 0
    task: str = "regression"
    dtype: torch.dtype = torch.float32
    train_mode: bool = False

    def __post_init__(self) -> None:
        problems = []
        if self.optimizer not in OPTIMIZERS:
            problems.append(f"optimizer must be one of {OPTIMIZERS}, got {self.optimizer!r}")
        if self.task not in TASKS:
            problems.append(f"task must be one of {TASKS}, got {self.task!r}")
        if not self.lr > 0:
            problems.append(f"lr must be positive, got {self.lr}")
        if self.epochs < 0 or self.batch_size < 1:
            problems.append(f"epochs must be ≥ 0 and batch_size ≥ 1, got {self.epochs} and {self.batch_size}")
        if self.weight_decay < 0 or not 0 <= self.momentum < 1:
            problems.append("weight_decay must be ≥ 0 and momentum in [0, 1)")
        if self.patience is not None and self.patience < 1:
            problems.append(f"patience must be ≥ 1 or None, got {self.patience}")
        if not self.dtype.is_floating_point:
            problems.append(f"dtype must be a floating dtype, got {self.dtype}")
        if problems:
            raise FineTuneSettingsError("; ".join(problems) + ".")


@dataclass(frozen=True, eq=False)
class EpochEvent:
    """One epoch's report: losses, validation metrics, work seconds so far, predictions on the grid.

    Epoch 0 is the starting model (train_loss over the whole training set); later epochs report
    the mean loss of the epoch's batches. `step` counts optimizer steps; `member` is the ensemble
    member (0 for a single run). `elapsed` excludes time the consumer spent between events.
    """

    epoch: int
    train_loss: float
    val_loss: float | None
    val_metrics: dict[str, float]
    elapsed: float
    grid_pred: np.ndarray | None = None
    step: int = 0
    member: int = 0


@dataclass
class FineTuneResult:
    """The fine-tuned copy (best weights, eval mode), every epoch's event, and how the run ended."""

    model: nn.Module
    history: list[EpochEvent]
    best_epoch: int
    stopped_early: bool
    wall_time: float
    settings: FineTuneSettings = field(default_factory=FineTuneSettings)
    vector: bool = True  # regression targets were (n,), so predictions are (m,)


def _xy(data: Dataset | tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    return (data.X, data.y) if isinstance(data, Dataset) else (torch.as_tensor(data[0]), torch.as_tensor(data[1]))


def _prepare(data, s: FineTuneSettings, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    X, y = _xy(data)
    X = X.to(device, s.dtype if X.is_floating_point() else X.dtype)
    if X.dim() == 0 or y.shape[:1] != X.shape[:1] or X.shape[0] == 0:
        raise ShapeError(f"X and y need the same, nonzero number of rows; got {tuple(X.shape)} and {tuple(y.shape)}.")
    if s.task == "classification":
        if y.is_floating_point() or y.dim() != 1:
            raise ShapeError("Classification needs y as (n,) int64 class indices; for real targets use task='regression'.")
        return X, y.to(device, torch.long)
    if not y.is_floating_point() or y.dim() not in (1, 2):
        raise ShapeError("Regression needs float targets (n,) or (n, K); for class indices use task='classification'.")
    return X, y.to(device, s.dtype)


def _forward(model: nn.Module, X: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return torch.cat([model(X[i : i + EVAL_CHUNK]).reshape(min(EVAL_CHUNK, X.shape[0] - i), -1)
                          for i in range(0, X.shape[0], EVAL_CHUNK)])


def _loss(out: torch.Tensor, y: torch.Tensor, task: str) -> torch.Tensor:
    if task == "classification":
        return F.cross_entropy(out.reshape(y.shape[0], -1), y)
    return F.mse_loss(out.reshape(y.shape), y)


def _metrics(model: nn.Module, X: torch.Tensor, y: torch.Tensor, task: str) -> tuple[float, dict[str, float]]:
    out = _forward(model, X)
    loss = float(_loss(out, y, task))
    if task == "classification":
        return loss, {"nll": loss, "accuracy": float((out.argmax(1) == y).double().mean())}
    return loss, {"mse": loss, "rmse": math.sqrt(loss)}


def _check_outputs(model: nn.Module, X: torch.Tensor, y: torch.Tensor, task: str) -> None:
    k = _forward(model, X[:1]).shape[1]
    if task == "classification":
        if k < 2 or int(y.min()) < 0 or int(y.max()) >= k:
            raise ShapeError(f"The model has {k} logits but the class indices span [{int(y.min())}, {int(y.max())}].")
    elif k != (1 if y.dim() == 1 else y.shape[1]):
        raise ShapeError(f"The model has {k} outputs but y has shape {tuple(y.shape)}.")


def _grid_pred(model: nn.Module, grid: torch.Tensor | None, task: str, vector: bool) -> np.ndarray | None:
    if grid is None:
        return None
    out = _forward(model, grid)
    out = out.softmax(1) if task == "classification" else (out[:, 0] if vector else out)
    return out.detach().cpu().numpy()


def finetune_iter(
    model: nn.Module, train: Dataset, val: Dataset | None, settings: FineTuneSettings,
    grid: torch.Tensor | None = None, cancel: CancelToken | None = None, max_rate: float | None = None,
    device: torch.device | str | None = None,
) -> Generator[EpochEvent, None, FineTuneResult]:
    """Yield one EpochEvent per epoch (at most `max_rate` per second if set); return the FineTuneResult.

    `device` is where the tuned copy of the weights lives (default: the model's).
    """
    return (yield from _run(model, train, val, settings, grid, cancel, max_rate, device=device))


class TunedModel(nn.Module):
    """Fine-tuned weights applied to the original module with ``torch.func.functional_call``.

    The original module is never copied or modified, so TorchScript modules (which cannot be
    deep-copied), torch.export programs and ordinary modules all fine-tune the same way. The tuned
    parameters are this module's parameters; buffers travel alongside. The original's train/eval
    flags follow this module's ``training`` during each forward and are restored afterwards.
    """

    def __init__(self, base: nn.Module, params: dict[str, torch.Tensor], buffers: dict[str, torch.Tensor]) -> None:
        super().__init__()
        object.__setattr__(self, "_base", base)  # not a submodule: its weights are not ours
        self._names = list(params)
        self.tensors = nn.ParameterList([nn.Parameter(t, requires_grad=t.requires_grad) for t in params.values()])
        self._buffer_state = buffers
        self.training = False

    def state(self) -> dict[str, torch.Tensor]:
        """Return name -> tensor of every parameter and buffer, as functional_call takes them."""
        return {**dict(zip(self._names, self.tensors)), **self._buffer_state}

    def state_dict(self, *args, **kwargs) -> dict[str, torch.Tensor]:  # noqa: ARG002 - nn.Module's signature
        """Return the tuned weights and buffers under the original module's names (loadable into it)."""
        return {n: t.detach() for n, t in self.state().items()}

    def forward(self, *args, **kwargs):
        """Return the original module's output with the tuned weights."""
        with _module_mode(self._base, self.training):
            return torch.func.functional_call(self._base, self.state(), args, kwargs)


@contextlib.contextmanager
def _module_mode(module: nn.Module, training: bool):
    """Set train/eval flags on every submodule (exported programs refuse .train()); restore them after."""
    mods = list(module.modules())
    script = getattr(module, "script", None)
    if script is not None:
        mods += list(script.modules())
    saved = [(m, m.training) for m in mods]
    try:
        for m in mods:
            m.training = training
        yield
    finally:
        for m, flag in saved:
            m.training = flag


def _tuned_copy(model: nn.Module, s: FineTuneSettings, device: torch.device | None) -> tuple[TunedModel, ParamSubset]:
    """Return (a TunedModel holding fresh copies of the weights in s.dtype, the trained subset)."""
    subset = ParamSubset.from_spec(model, s.params)
    first = next(iter(model.parameters()), None)
    device = torch.device(device) if device is not None else (first.device if first is not None else torch.device("cpu"))

    def fresh(t: torch.Tensor) -> torch.Tensor:
        return t.detach().to(device, s.dtype if t.is_floating_point() else t.dtype).clone()

    trained = set(subset.names)
    params = {n: fresh(p).requires_grad_(n in trained) for n, p in model.named_parameters()}
    buffers = {n: fresh(b) for n, b in model.named_buffers()}
    return TunedModel(model, params, buffers), subset


def _run(model, train, val, s: FineTuneSettings, grid, cancel, max_rate, init_std: float = 0.0, member: int = 0,
         device=None):
    busy, t0 = 0.0, time.perf_counter()
    cancel = cancel or CancelToken()
    cancel.raise_if_cancelled()
    work, subset = _tuned_copy(model, s, device)
    named = dict(zip(work._names, work.tensors))
    trained = [named[n] for n in subset.names]
    device = trained[0].device
    X, y = _prepare(train, s, device)
    Xv, yv = _prepare(val, s, device) if val is not None else (None, None)
    _check_outputs(work, X, y, s.task)
    vector = y.dim() == 1
    grid = None if grid is None else grid.to(device, s.dtype if grid.is_floating_point() else grid.dtype)
    order = torch.Generator().manual_seed(s.seed)
    if init_std > 0:  # ensemble members start from θ* + N(0, init_std²) on the trained subset only
        with torch.no_grad():
            for p in trained:
                p.add_(torch.randn(p.shape, generator=order, dtype=p.dtype).to(device), alpha=init_std)
    opt = (torch.optim.SGD(trained, lr=s.lr, momentum=s.momentum, weight_decay=s.weight_decay) if s.optimizer == "sgd"
           else torch.optim.Adam(trained, lr=s.lr, weight_decay=s.weight_decay))
    # Buffers are snapshotted too in train mode, where BatchNorm statistics move with the weights.
    keep = dict(zip(subset.names, trained)) | (dict(work._buffer_state) if s.train_mode else {})

    def evaluate(epoch: int, train_loss: float | None, step: int) -> EpochEvent:
        work.eval()
        if train_loss is None:
            train_loss = _metrics(work, X, y, s.task)[0]
        val_loss, metrics = _metrics(work, Xv, yv, s.task) if Xv is not None else (None, {})
        return EpochEvent(epoch, train_loss, val_loss, metrics, busy + time.perf_counter() - t0,
                          _grid_pred(work, grid, s.task, vector), step, member)

    history = [evaluate(0, None, 0)]
    best_epoch, best_loss = 0, history[0].val_loss if Xv is not None else math.inf
    snapshot = {n: t.detach().clone() for n, t in keep.items()}
    stopped_early, step, last_yield = False, 0, -math.inf
    n, batch = X.shape[0], min(s.batch_size, X.shape[0])
    for epoch in range(s.epochs + 1):
        if epoch > 0:
            if s.train_mode:
                work.train()
            # Dropout in train mode draws from the global RNG: seed it per epoch, then put it back.
            with torch.random.fork_rng(devices=[device] if device.type == "cuda" else [], enabled=s.train_mode):
                if s.train_mode:
                    torch.manual_seed(s.seed * EPOCH_SEED_STRIDE + epoch)
                total = torch.zeros((), dtype=torch.float64, device=device)
                perm = torch.randperm(n, generator=order).to(device)
                for start in range(0, n, batch):
                    cancel.raise_if_cancelled()
                    idx = perm[start : start + batch]
                    opt.zero_grad(set_to_none=True)
                    loss = _loss(work(X[idx]), y[idx], s.task)
                    loss.backward()
                    opt.step()
                    step += 1
                    total += loss.detach().double() * idx.numel()
            train_loss = float(total) / n
            if not math.isfinite(train_loss):
                raise SolverError(f"Fine-tuning diverged at epoch {epoch} (train loss {train_loss}): "
                                  f"lower lr (now {s.lr}).")
            history.append(evaluate(epoch, train_loss, step))
        event = history[-1]
        if Xv is None:
            best_epoch = epoch
        elif event.val_loss < best_loss:
            best_epoch, best_loss = epoch, event.val_loss
            snapshot = {n: t.detach().clone() for n, t in keep.items()}
        stop = s.patience is not None and Xv is not None and epoch - best_epoch >= s.patience
        now = time.perf_counter()
        if max_rate is None or now - last_yield >= 1.0 / max_rate or stop or epoch == s.epochs:
            busy += now - t0
            yield event
            t0 = last_yield = time.perf_counter()
            cancel.raise_if_cancelled()
        if stop:
            stopped_early = epoch < s.epochs
            break
    if Xv is not None:
        with torch.no_grad():
            for name, t in keep.items():
                t.copy_(snapshot[name])
    for p in trained:
        p.requires_grad_(False)
    work.eval()
    return FineTuneResult(work, history, best_epoch, stopped_early, busy + time.perf_counter() - t0, s, vector)


def _drain(gen: Generator):
    while True:
        try:
            next(gen)
        except StopIteration as stop:
            return stop.value


def finetune(model, train, val, settings, grid=None, cancel=None) -> FineTuneResult:
    """Return the FineTuneResult of running :func:`finetune_iter` to completion."""
    return _drain(finetune_iter(model, train, val, settings, grid, cancel))


def _unwrap(result_or_model, task: str | None) -> tuple[nn.Module, str, bool]:
    if isinstance(result_or_model, FineTuneResult):
        return result_or_model.model, task or result_or_model.settings.task, result_or_model.vector
    return result_or_model, task or "regression", False


def predict(result_or_model: FineTuneResult | nn.Module, X: torch.Tensor, task: str | None = None) -> torch.Tensor:
    """Return regression outputs ((m,) for 1-D targets, else (m, K)) or class probabilities (m, C)."""
    model, task, vector = _unwrap(result_or_model, task)
    first = next(iter(model.parameters()))
    X = torch.as_tensor(X)
    X = X.to(first.device, first.dtype if X.is_floating_point() else X.dtype)
    was_training = model.training
    model.eval()
    try:
        out = _forward(model, X)
    finally:
        model.train(was_training)
    if task == "classification":
        return out.softmax(1)
    return out[:, 0] if vector else out


def evaluate(result_or_model, data: Dataset, task: str | None = None) -> tuple[float, dict[str, float]]:
    """Return (loss, metrics) on `data`: MSE with rmse, or cross-entropy with accuracy (eval mode)."""
    model, task, _ = _unwrap(result_or_model, task)
    first = next(iter(model.parameters()))
    X, y = _prepare(data, FineTuneSettings(task=task, dtype=first.dtype), first.device)
    return _metrics(model, X, y, task)


@dataclass
class EnsembleResult:
    """Fine-tuned members that differ by seed; `predict` averages them."""

    members: list[FineTuneResult]
    wall_time: float

    def predict(self, X: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor] | torch.Tensor:
        """Return (mean, variance across members) for regression, or mean class probabilities."""
        preds = torch.stack([predict(m, X) for m in self.members])
        if self.members[0].settings.task == "classification":
            return preds.mean(0)
        # Population variance (1/M): the variance of the equally weighted mixture of members.
        return preds.mean(0), preds.var(0, correction=0)


def finetune_ensemble_iter(model, train, val, settings, members=5, grid=None, cancel=None,
                           init_std: float = DEFAULT_ENSEMBLE_INIT_STD) -> Generator[EpochEvent, None, EnsembleResult]:
    """Yield every member's EpochEvents (tagged with `member`); return the EnsembleResult.

    Member i uses seed settings.seed + i for its data order and starts from θ* + N(0, init_std² I)
    on the trained subset. Without the perturbation the spread comes from data order alone and is
    small everywhere; with it each start is a draw from the GP's prior around θ* (init_std plays s,
    the square root of prior_var). For the linearized model, plain gradient descent from such draws
    to convergence gives exact samples of the noiseless GP posterior ("sample-then-optimize");
    Adam, early stopping and the network's curvature make the ensemble an approximation of that.
    """
    if members < 1:
        raise FineTuneSettingsError(f"members must be ≥ 1, got {members}.")
    results = []
    for i in range(members):
        s = dataclasses.replace(settings, seed=settings.seed + i)
        results.append((yield from _run(model, train, val, s, grid, cancel, None, init_std, i)))
    return EnsembleResult(results, sum(r.wall_time for r in results))


def finetune_ensemble(model, train, val, settings, members=5, grid=None, cancel=None,
                      init_std: float = DEFAULT_ENSEMBLE_INIT_STD) -> EnsembleResult:
    """Return the EnsembleResult of :func:`finetune_ensemble_iter` run to completion."""
    return _drain(finetune_ensemble_iter(model, train, val, settings, members, grid, cancel, init_std))
