"""Sigmoid attention and learned alpha against float64 references, their training on the embedded data (with SOFT's),
and Figure 5's smoke sweep end to end."""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from reluvit.attention import PointwiseAttention
from reluvit.errors import ArgumentError
from reluvit.kernels import reference as reference_path
from reluvit.run.train import run as train_run
from reluvit.sweep import spec as sweeps
from test_attention import HEADS, N, make_input, make_layer, reference, rel_err, run
from test_train import train_losses


def sigmoid_reference(x: np.ndarray, p: dict, bias: float) -> np.ndarray:
    """sigmoid(q.k / sqrt(d) + b) v, float64, from test_attention's weights."""
    b, n, c = x.shape
    qkv = x @ p["qkv_w"].T + p["qkv_b"]
    q, k, v = (qkv[..., i * c:(i + 1) * c].reshape(b, n, HEADS, -1).transpose(0, 2, 1, 3) for i in range(3))
    a = 1 / (1 + np.exp(-(q @ k.transpose(0, 1, 3, 2) / math.sqrt(q.shape[-1]) + bias)))
    return (a @ v).transpose(0, 2, 1, 3).reshape(b, n, c) @ p["proj_w"].T + p["proj_b"]


@pytest.mark.parametrize("bias,expected", [(None, -math.log(N)), (-3.0, -3.0), (0.0, 0.0)])
def test_sigmoid_attention_matches_reference(bias, expected):
    layer, p = make_layer(activation="sigmoid_attn", sigmoid_bias=bias)
    xt, x = make_input()
    assert rel_err(run(layer, xt), sigmoid_reference(x, p, expected)) <= 1e-5


def test_sigmoid_attention_chunked_over_queries_matches_whole(monkeypatch):
    """Over the weights' byte budget sigmoid attention is built a chunk of queries at a time (as point-wise
    attention): the same output and gradients as whole."""
    layer, p = make_layer(activation="sigmoid_attn")
    xt, x = make_input()
    xt.requires_grad_(True)
    out = layer(xt)
    (grad_whole,) = torch.autograd.grad(out.sum(), xt)
    chunks, checkpoint = [], reference_path.checkpoint  # counted, still recomputed in the backward pass
    monkeypatch.setattr(reference_path, "MAX_WEIGHTS_BYTES", 2 * HEADS * N * 4 * xt.shape[0])  # two queries per chunk
    monkeypatch.setattr(reference_path, "checkpoint", lambda *args, **kw: chunks.append(1) or checkpoint(*args, **kw))
    chunked = layer(xt)
    assert len(chunks) == N // 2
    (grad_chunked,) = torch.autograd.grad(chunked.sum(), xt)
    assert rel_err(chunked, sigmoid_reference(x, p, -math.log(N))) <= 1e-5
    torch.testing.assert_close(chunked, out)
    torch.testing.assert_close(grad_chunked, grad_whole)


def test_sigmoid_attention_is_not_pointwise_sigmoid():
    xt, _ = make_input()
    ours, _ = make_layer(activation="sigmoid_attn")
    pointwise, _ = make_layer(activation="sigmoid", alpha=1.0)
    assert rel_err(run(ours, xt), run(pointwise, xt).double().numpy()) > 1e-2


def test_sigmoid_attention_bias_counts_patches_only_when_asked():
    layer, p = make_layer(activation="sigmoid_attn", seq_len="patches", num_prefix_tokens=1)
    xt, x = make_input()
    assert rel_err(run(layer, xt), sigmoid_reference(x, p, -math.log(N - 1))) <= 1e-5


@pytest.mark.parametrize("mode,shape", [("layer", ()), ("head", (HEADS, 1, 1))])
@pytest.mark.parametrize("alpha", [0.5, 1.0, 2.0])
def test_learned_alpha_starts_at_alpha_and_matches_fixed(mode, shape, alpha):
    """softplus(raw) starts at alpha, so the layer starts as the fixed-alpha one; moving raw_alpha moves L^-alpha."""
    learned, p = make_layer(activation="relu2", alpha=alpha, learn_alpha=mode)
    xt, x = make_input()
    assert learned.raw_alpha.shape == shape
    torch.testing.assert_close(learned.learned_alpha(), torch.full(shape, alpha))
    assert rel_err(run(learned, xt), reference(x, p, heads=HEADS, activation="relu2", alpha=alpha)) <= 1e-5
    with torch.no_grad():
        learned.raw_alpha.copy_(torch.full(shape, math.log(math.expm1(0.25))))
    assert rel_err(run(learned, xt), reference(x, p, heads=HEADS, activation="relu2", alpha=0.25)) <= 1e-5


def test_learned_alpha_per_head_gets_per_head_gradients():
    layer, _ = make_layer(activation="relu", learn_alpha="head")
    xt, _ = make_input()
    layer(xt).square().sum().backward()
    assert layer.raw_alpha.grad.shape == (HEADS, 1, 1) and (layer.raw_alpha.grad != 0).all()
    assert len(set(layer.raw_alpha.grad.flatten().tolist())) == HEADS


@pytest.mark.parametrize("options,key,message", [
    ({"activation": "softmax", "learn_alpha": "layer"}, "learn_alpha", "'layer' needs a point-wise activation"),
    ({"activation": "sigmoid_attn", "learn_alpha": "head"}, "learn_alpha", "'head' needs a point-wise activation"),
    ({"activation": "relu", "learn_alpha": "layer", "alpha": 0.0}, "alpha", "a learned alpha starts > 0"),
    ({"learn_alpha": "always"}, "learn_alpha", "'always' is not one of: none, layer, head"),
    ({"activation": "sigmoid_attn", "sigmoid_bias": float("nan")}, "sigmoid_bias", "nan is not a finite real"),
    ({"activation": "sigmoid_attn", "sigmoid_bias": "-2"}, "sigmoid_bias", "'-2' is not a finite real"),
])
def test_bad_options(options, key, message):
    with pytest.raises(ArgumentError, match=f"^{key}: {re.escape(message)}") as error:
        PointwiseAttention(96, 3, **options)
    assert error.value.name == key and isinstance(error.value, ValueError)


@pytest.mark.parametrize("overrides,message", [
    (["attention=soft", "attention.soft.sr=0"], "attention.soft.sr"),
    (["attention=soft", "attention.soft.local_kernel=4"], "attention.soft.local_kernel"),
    (["attention=soft", "attention.gate=true"], "attention.gate"),
    (["attention=softmax", "attention.learn_alpha=layer"], "attention.learn_alpha"),
    (["attention=relu_learned", "attention.alpha=0"], "attention.alpha"),
    (["attention.learn_alpha=sometimes"], "attention.learn_alpha"),
])
def test_config_errors_name_the_key(tiny_cfg, overrides, message):
    from reluvit.run.schema import ConfigError
    from reluvit.run.validate import validate

    with pytest.raises(ConfigError, match=message):
        validate(tiny_cfg(*overrides))


def test_run_names_distinguish_the_new_points(tiny_cfg):
    names = [tiny_cfg(*o).run_name.rsplit("/", 1)[1].split("+")[0] for o in (
        ["attention=relu"], ["attention=relu_learned"], ["attention=relu_learned", "attention.learn_alpha=head"],
        ["attention=sigmoid_attn"], ["attention=sigmoid_attn", "attention.sigmoid_bias=-2"], ["attention=soft"],
        ["attention=soft", "attention.soft.sr=1"], ["attention=soft", "attention.soft.sym_norm=true"],
        ["attention=soft", "attention.soft.newton_iters=10"], ["attention=soft", "attention.soft.local_kernel=5"])]
    assert len(set(names)) == len(names), names
    assert names[:4] == ["relu-a1-s0", "relu-a1-learn_layer-s0", "relu-a1-learn_head-s0", "sigmoid_attn-blogL-s0"]


# --- training on the embedded data (tests/conftest.py TINY: digits, mini ViT at L = 16) -------------------------


def _trains(cfg) -> dict:
    summary = train_run(cfg)
    assert summary["status"] == "completed" and summary["global_step"] == 40
    losses = train_losses(cfg.run_dir)
    first, last = losses.iloc[:5].mean(), losses.iloc[-5:].mean()
    assert last < 0.9 * first, f"loss {first:.3f} -> {last:.3f}"
    return summary


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["layer", "head"])
def test_learned_alpha_trains_and_is_logged(tiny_cfg, mode):
    cfg = tiny_cfg("attention=relu_learned", f"attention.learn_alpha={mode}", "trainer.max_steps=40",
                   "recipe.lr=2e-3")
    summary = _trains(cfg)
    learned = json.loads((Path(cfg.run_dir) / "summary.json").read_text())["learned_alpha"]
    assert learned == summary["learned_alpha"]
    layers = [learned[f"attn/alpha_layer{i}"] for i in range(4)]  # mini: depth 4
    assert all(a > 0 for a in layers) and any(abs(a - 1.0) > 1e-3 for a in layers)  # it moved from its start
    assert learned["attn/alpha_mean"] == pytest.approx(np.mean(layers))
    assert ("attn/alpha_layer0_head2" in learned) == (mode == "head")
    metrics = next(Path(cfg.run_dir).glob("csv/version_*/metrics.csv")).read_text()
    assert "attn/alpha_layer3" in metrics  # logged during training


def test_soft_trains(tiny_cfg):
    summary = _trains(tiny_cfg("attention=soft", "trainer.max_steps=40", "recipe.lr=2e-3"))
    assert summary["run_name"].split("+")[0].endswith("/soft-sr2-s0")


# --- Figure 5 --------------------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_fig5_smoke_points_run_end_to_end(tmp_path):
    """The smoke block of sweeps/fig5.yaml, cut to SOFT and learned alpha on the 8x8 digits, through `reluvit sweep`:
    both runs complete, the roll-up has them, the figure is drawn."""
    spec = yaml.safe_load(sweeps.path("fig5").read_text())
    block = spec["scales"]["smoke"]["blocks"][0]
    assert {"soft", "relu_learned", "sigmoid_attn", "softmax", "relu"} == set(block["attention"])
    spec["scales"] = {"smoke": {"blocks": [{**block, "data": "digits", "attention": ["soft", "relu_learned"],
                                            "seed": [0]}],
                                "plot": spec["scales"]["smoke"]["plot"]}}
    (tmp_path / "sweeps").mkdir()
    (tmp_path / "sweeps" / "fig5.yaml").write_text(yaml.safe_dump(spec))
    result = subprocess.run(
        [sys.executable, "-m", "reluvit", "sweep", "fig5", "--scale", "smoke", "--runs-dir", str(tmp_path / "runs"),
         "--results-dir", str(tmp_path / "results"), "trainer.max_steps=3", "trainer.enable_progress_bar=false",
         "trainer.accelerator=cpu"],
        capture_output=True, text=True, timeout=600, env={**os.environ, "RELUVIT_SWEEPS_DIR": str(tmp_path / "sweeps")},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    import pandas as pd

    table = pd.read_parquet(tmp_path / "results" / "runs.parquet")
    assert sorted(table["run_name"]) == ["smoke-digits/micro2/relu-a1-learn_layer-s0+trainer.max_steps=3",
                                         "smoke-digits/micro2/soft-sr2-s0+trainer.max_steps=3"]
    assert set(table["status"]) == {"completed"}
    assert table["attn_alpha_mean"].notna().sum() == 1
    assert (tmp_path / "results" / "smoke" / "fig5.png").stat().st_size > 0
