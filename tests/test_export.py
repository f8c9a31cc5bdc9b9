"""``reluvit export``: a finished run's weights as safetensors. A softmax run loads into stock timm
(``timm.create_model(..., pretrained_cfg_overlay=dict(file=...))``) and computes what the trained model computes; a
relu run loads into timm with reluvit's attention layer, and with reluvit; an unfinished run is refused."""

from __future__ import annotations

import json

import pytest
import timm
import torch
from safetensors import safe_open

from conftest import TINY
from reluvit import attention_layer, cli
from reluvit.models import create_model, prefix_tokens
from reluvit.run.checkpoint import load_checkpoint
from reluvit.run.compose import compose
from reluvit.run.export import ExportRefused, export, load_with_reluvit
from reluvit.run.rundir import last_checkpoint, read_summary
from reluvit.run.train import run


def trained_model(run_dir) -> torch.nn.Module:
    """The run's model as it trained, built from its summary and loaded from its checkpoint (independently of the
    export)."""
    config = read_summary(run_dir)["config"]
    model = create_model(**{k: v for k, v in config["model"].items() if k != "name"}, attention=config["attention"])
    state = load_checkpoint(last_checkpoint(run_dir))["state_dict"]
    model.load_state_dict({k.removeprefix("model."): v for k, v in state.items() if k.startswith("model.")})
    return model.eval()


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """A softmax and a relu run of the tiny model (qk-LayerNorm, the paper's), a few steps each."""
    folder = tmp_path_factory.mktemp("runs")
    return {attention: run(compose([*TINY, f"attention={attention}", "trainer.max_steps=4", f"runs_dir={folder}"]))
            for attention in ("softmax", "relu")}


def images(config: dict) -> torch.Tensor:
    data, seeded = config["data"], torch.Generator().manual_seed(0)
    return torch.randn(5, data["in_chans"], data["img_size"], data["img_size"], generator=seeded)


def test_a_softmax_run_loads_into_stock_timm(runs, tmp_path, capsys):
    summary = runs["softmax"]
    cli.main(["export", summary["run_dir"], "--out", str(tmp_path / "softmax.safetensors")])
    printed = capsys.readouterr().out
    path = tmp_path / "softmax.safetensors"
    recipe = json.loads(path.with_suffix(".json").read_text())
    assert recipe["stock_timm"] and "timm.create_model('vit_base_patch16_224', pretrained=True" in printed
    with safe_open(str(path), "pt") as f:
        assert json.loads(f.metadata()["reluvit"]) == recipe
    model = timm.create_model(recipe["timm_model"], pretrained=True,
                              pretrained_cfg_overlay=dict(file=str(path), num_classes=recipe["timm_kwargs"]
                                                          ["num_classes"]), **recipe["timm_kwargs"]).eval()
    assert type(model.blocks[0].attn) is timm.models.vision_transformer.Attention  # timm's own module
    x = images(summary["config"])
    with torch.no_grad():
        expected = trained_model(summary["run_dir"])(x)
        torch.testing.assert_close(model(x), expected, rtol=1e-5, atol=1e-5)
        assert expected.abs().max() > 0.01  # a trained head, not zeros
        torch.testing.assert_close(load_with_reluvit(path)(x), expected, rtol=0, atol=0)


def test_a_relu_run_loads_with_its_attention_layer(runs, tmp_path):
    summary = runs["relu"]
    path, recipe = export(summary["run_dir"])
    assert path == last_checkpoint(summary["run_dir"]).parents[1] / "export" / f"{summary['run_name']}.safetensors"
    assert not recipe["stock_timm"] and recipe["reluvit_create_model"]["attention"]["activation"] == "relu"
    attention = dict(recipe["reluvit_create_model"]["attention"])
    qk_norm = attention.pop("qk_norm")
    layer = attention_layer(**attention, num_prefix_tokens=prefix_tokens(recipe["reluvit_create_model"]["pool"]))
    model = timm.create_model(recipe["timm_model"], pretrained=True, attn_layer=layer,
                              pretrained_cfg_overlay=dict(file=str(path), num_classes=recipe["timm_kwargs"]
                                                          ["num_classes"]), **{**recipe["timm_kwargs"],
                                                                               "qk_norm": qk_norm}).eval()
    x = images(summary["config"])
    with torch.no_grad():
        expected = trained_model(summary["run_dir"])(x)
        torch.testing.assert_close(model(x), expected, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(load_with_reluvit(path)(x), expected, rtol=0, atol=0)


def test_an_unfinished_run_is_refused(tmp_path, capsys):
    with pytest.raises(ExportRefused, match="not a finished run"):
        export(tmp_path)
    with pytest.raises(SystemExit, match="not a finished run"):
        cli.main(["export", str(tmp_path)])
