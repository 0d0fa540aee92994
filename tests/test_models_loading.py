"""Loading pretrained models: every format round-trips, linearizes with torch.func, and summarizes."""

from __future__ import annotations

import hashlib
import warnings

import pytest
import torch
from test_models_support import (
    FORMAT,
    HOWS,
    example_input,
    make_model,
    save_model,
    write_arch,
)
from torch import nn

from ntk_studio.core import LinearizedGP, LinearizedModel
from ntk_studio.core.models import (
    LayerInfo,
    LoadedModel,
    ModelSummary,
    TorchScriptModule,
    check_model,
    load_architecture,
    load_model,
    summarize,
)
from ntk_studio.core.params import parameter_layers

ROUND_TRIP_ATOL = 1e-6
LINEARIZED_ATOL = 1e-10  # float64 engine: the loaded model must give the eager model's J to rounding
LINEARIZABLE = ("script", "trace", "export", "state_dict")


@pytest.mark.parametrize("how", HOWS)
@pytest.mark.parametrize("kind", ["mlp", "cnn"])
def test_round_trip_gives_identical_predictions(tmp_path, kind, how):
    model = make_model(kind)
    path, arch = save_model(model, kind, how, tmp_path)
    before = path.read_bytes()

    loaded = load_model(path, arch=arch, trust_pickle=(how == "pickle"))

    assert isinstance(loaded, LoadedModel)
    assert loaded.format == FORMAT[how]
    assert loaded.sha256 == hashlib.sha256(before).hexdigest()
    assert loaded.path == path.resolve()
    assert not any(m.training for m in loaded.module.modules())
    x = example_input(kind, rows=9, seed=5)  # a batch size the model was not saved with
    with torch.no_grad():
        expected, got = model(x), loaded.module(x)
    assert got.shape == expected.shape
    assert torch.allclose(got, expected, atol=ROUND_TRIP_ATOL, rtol=0)
    assert path.read_bytes() == before


def test_state_dict_and_safetensors_are_bit_identical(tmp_path):
    model = make_model("mlp")
    x = example_input("mlp")
    for how in ("state_dict", "safetensors"):
        path, arch = save_model(model, "mlp", how, tmp_path)
        with torch.no_grad():
            assert torch.equal(load_model(path, arch=arch).module(x), model(x))


@pytest.mark.parametrize("how", LINEARIZABLE)
@pytest.mark.parametrize("kind", ["mlp", "cnn", "scaled"])
def test_loaded_model_linearizes_like_the_eager_model(tmp_path, kind, how):
    model = make_model(kind)
    path, arch = save_model(model, kind, how, tmp_path)
    module = load_model(path, arch=arch).module
    x = example_input(kind)
    # Warm TorchScript's profiling executor with grad-enabled forwards: its optimized graph then
    # differentiates with TorchScript's own autodiff, which fails under vmap unless bypassed.
    for _ in range(3):
        module(x)

    ref, lin = LinearizedModel(model), LinearizedModel(module)
    assert lin.subset.names == ref.subset.names
    assert torch.allclose(lin.forward(x), ref.forward(x), atol=LINEARIZED_ATOL)
    gen = torch.Generator().manual_seed(3)
    v = torch.randn(3, ref.num_params, dtype=torch.float64, generator=gen)
    assert torch.allclose(lin.jvp(x, v), ref.jvp(x, v), atol=LINEARIZED_ATOL)
    u = torch.randn(x.shape[0], 2, dtype=torch.float64, generator=gen)
    assert torch.allclose(lin.vjp(x, u), ref.vjp(x, u), atol=LINEARIZED_ATOL)
    assert torch.allclose(lin.jacobian(x), ref.jacobian(x), atol=LINEARIZED_ATOL)
    # torch.func swapped tensors in and out of the module: its own weights are untouched.
    for (name, p), (_, q) in zip(module.named_parameters(), model.named_parameters()):
        assert torch.equal(p, q), name


def test_torchscript_is_wrapped_because_functional_call_refuses_script_modules(tmp_path):
    """Documents torch 2.13: the raw script module fails in the engine; the loaded wrapper works."""
    model = make_model("mlp")
    path, _ = save_model(model, "mlp", "script", tmp_path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        raw = torch.jit.load(str(path))
    with pytest.raises(RuntimeError, match="Jitted"):
        LinearizedModel(raw).forward(example_input("mlp"))

    loaded = load_model(path)
    assert isinstance(loaded.module, TorchScriptModule)
    assert [n for n, _ in loaded.module.named_parameters()] == [n for n, _ in model.named_parameters()]
    assert any("TorchScript is deprecated" in n for n in loaded.notes)


def test_exported_module_accepts_eval_after_loading(tmp_path):
    """Documents torch 2.13: ExportedProgram.module().eval() raises; the loader makes it a no-op."""
    model = make_model("mlp")
    path, _ = save_model(model, "mlp", "export", tmp_path)
    with pytest.raises(NotImplementedError):
        torch.export.load(str(path)).module().eval()
    module = load_model(path).module
    assert module.eval() is module


def test_scripted_module_switches_to_eval_and_notes_it(tmp_path):
    model = make_model("mlp").train()
    path = tmp_path / "train_mode.pt"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.jit.save(torch.jit.script(model), str(path))
    loaded = load_model(path)
    x = example_input("mlp")
    with torch.no_grad():
        assert torch.allclose(loaded.module(x), model.eval()(x), atol=ROUND_TRIP_ATOL, rtol=0)
    assert any("train mode" in n and "BatchNorm1d" in n and "Dropout" in n for n in loaded.notes)


def test_state_dict_into_train_mode_factory_notes_the_switch(tmp_path):
    path, arch = save_model(make_model("mlp"), "mlp", "state_dict", tmp_path)
    loaded = load_model(path, arch=arch)
    assert any("switched to eval" in n for n in loaded.notes)
    assert not loaded.module.training


def test_checkpoint_dict_and_data_parallel_prefix_are_unwrapped(tmp_path):
    model = make_model("mlp")
    arch = f"{write_arch(tmp_path)}:make_mlp"
    state = {f"module.{k}": v for k, v in model.state_dict().items()}
    path = tmp_path / "ckpt.ckpt"
    torch.save({"state_dict": state, "epoch": 3, "lr": 0.1}, path)
    loaded = load_model(path, arch=arch)
    x = example_input("mlp")
    with torch.no_grad():
        assert torch.equal(loaded.module(x), model(x))
    assert any("checkpoint" in n for n in loaded.notes)
    assert any("DataParallel" in n for n in loaded.notes)


def test_format_comes_from_content_not_extension(tmp_path):
    model = make_model("mlp")
    path, _ = save_model(model, "mlp", "script", tmp_path, name="scripted.pth")
    assert load_model(path).format == "torchscript"
    path, arch = save_model(model, "mlp", "state_dict", tmp_path, name="weights.pt2")
    loaded = load_model(path, arch=arch)
    assert loaded.format == "state_dict"
    assert any("named like another format" in n for n in loaded.notes)


def test_arch_is_ignored_with_a_note_for_self_contained_files(tmp_path):
    path, _ = save_model(make_model("mlp"), "mlp", "export", tmp_path)
    loaded = load_model(path, arch=f"{write_arch(tmp_path)}:make_mlp")
    assert any("was not used" in n for n in loaded.notes)


def test_load_architecture_builds_the_module_and_imports_siblings(tmp_path):
    (tmp_path / "blocks.py").write_text("from torch import nn\nWIDTH = 7\n")
    (tmp_path / "net.py").write_text(
        "from torch import nn\nimport blocks\n\ndef build():\n    return nn.Linear(3, blocks.WIDTH)\n"
    )
    module = load_architecture(f"{tmp_path / 'net.py'}:build")
    assert isinstance(module, nn.Linear) and module.out_features == 7


def test_same_file_name_in_two_folders_gives_two_architectures(tmp_path):
    for sub, width in (("a", 2), ("b", 5)):
        (tmp_path / sub).mkdir()
        source = f"from torch import nn\ndef make():\n    return nn.Linear(1, {width})\n"
        (tmp_path / sub / "model.py").write_text(source)
    a = load_architecture(f"{tmp_path / 'a' / 'model.py'}:make")
    b = load_architecture(f"{tmp_path / 'b' / 'model.py'}:make")
    assert (a.out_features, b.out_features) == (2, 5)


# ---------------------------------------------------------------- summary


@pytest.mark.parametrize("how", [None, "script", "export"])
def test_summary_counts_parameters_per_layer(tmp_path, how):
    model = make_model("mlp")
    module = model if how is None else load_model(save_model(model, "mlp", how, tmp_path)[0]).module
    x = example_input("mlp")

    summary = summarize(module, x)

    assert isinstance(summary, ModelSummary)
    assert [layer.name for layer in summary.layers] == parameter_layers(module) == ["l1", "bn", "l2"]
    owners = dict(module.named_modules())
    for layer in summary.layers:
        assert isinstance(layer, LayerInfo)
        assert layer.params == sum(p.numel() for p in owners[layer.name].parameters(recurse=False))
        assert layer.trainable == layer.params
    assert [layer.kind for layer in summary.layers] == ["Linear", "BatchNorm1d", "Linear"]
    assert summary.total_params == sum(p.numel() for p in model.parameters()) == 4 * 8 + 8 + 16 + 8 * 2 + 2
    assert summary.input_shape == (6, 4)
    assert summary.output_shape == (6, 2)


def test_summary_table_lists_layers_and_total():
    model = make_model("cnn")
    model.head.bias.requires_grad_(False)
    summary = summarize(model, example_input("cnn"))
    table = summary.format_table()
    for name in ("conv", "bn", "head", "Conv2d", "BatchNorm2d", "total", f"{summary.total_params:,}"):
        assert name in table
    assert table.splitlines()[-1].startswith("note:")
    total_line = next(line for line in table.splitlines() if line.startswith("total"))
    assert total_line.split()[1:] == [f"{summary.total_params:,}", f"{summary.total_params - 2:,}"]
    assert summary.output_shape == (6, 2)
    assert any("requires_grad=False" in n for n in summary.notes)


def test_summary_counts_shared_weights_once_and_shows_root_parameters():
    model = make_model("scaled")
    tied = nn.Sequential(nn.Linear(3, 3), nn.Tanh(), nn.Linear(3, 3))
    tied[2].weight = tied[0].weight
    s_tied, s_scaled = summarize(tied), summarize(model)
    assert s_tied.total_params == s_tied.trainable_params == 3 * 3 + 3 + 3
    assert s_tied.format_table().splitlines()[-2].split() == ["total", "15", "15"]
    assert any("shared" in n for n in s_tied.notes)
    assert s_tied.output_shape is None and s_tied.input_shape is None
    assert s_scaled.layers[0] == LayerInfo(name="", kind="ScaledMLP", params=1, trainable=1)
    assert "(root)" in s_scaled.format_table()


@pytest.mark.parametrize("how", [None, "script", "trace", "export"])
def test_check_model_returns_output_shape_and_restores_mode(tmp_path, how):
    model = make_model("cnn")
    module = model if how is None else load_model(save_model(model, "cnn", how, tmp_path)[0]).module
    module.train()
    assert check_model(module, example_input("cnn")) == torch.Size([2, 2])
    assert module.training


@pytest.mark.parametrize("how", ["script", "trace", "export"])
def test_gp_on_a_loaded_model_matches_the_gp_on_the_eager_model(tmp_path, how):
    model = make_model("mlp")
    module = load_model(save_model(model, "mlp", how, tmp_path)[0]).module
    x, x_test = example_input("mlp", rows=12, seed=2), example_input("mlp", rows=5, seed=3)
    y = torch.sin(x[:, :2]).double()
    ref = LinearizedGP(model, prior_var=1.0, noise=0.01).fit(x, y)
    got = LinearizedGP(module, prior_var=1.0, noise=0.01).fit(x, y)
    for a, b in zip(got.predict(x_test), ref.predict(x_test)):
        assert torch.allclose(a, b, atol=1e-8)
