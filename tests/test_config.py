"""Every config file composes and validates; an invalid value exits with status 2 and names the key (the table of
invalid values is tests/test_bad_inputs.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from reluvit.data.embedded import EMBEDDED
from reluvit.run.build import micro_batch_size
from reluvit.run.compose import compose, expand
from reluvit.run.schema import CONF_DIR, ConfigError
from reluvit.run.validate import validate

GROUPS = ["model", "attention", "recipe", "data", "trainer", "logger"]


def options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF_DIR / group).glob("*.yaml"))


def imagefolder(tmp_path: Path, num_classes: int = 1000) -> list[str]:
    """Overrides for a (empty) ImageFolder tree, which also passes as a shard directory (data=imagenet21k ...):
    what the 224-px models and the paper recipes train on."""
    for split in ("train", "val"):
        (tmp_path / split).mkdir(exist_ok=True)
    for label in range(num_classes):
        (tmp_path / "train" / f"c{label:04d}").mkdir(exist_ok=True)
    (tmp_path / "_info.json").write_text("{}")
    return ["data=imagefolder", f"data.path={tmp_path}", f"data.num_classes={num_classes}"]


@pytest.mark.parametrize("group,option", [(g, o) for g in GROUPS for o in options(g)])
def test_every_config_file_composes(group, option, tmp_path):
    small = option.startswith(("mini", "micro", "smoke")) or option in EMBEDDED
    paper = group in ("model", "recipe", "data") and not small
    base = [*imagefolder(tmp_path), "model=s16"] if paper else []
    overrides = [*base, f"{group}={option}"]
    if group == "data" and paper:  # a data option replaces the group: give its path after it
        overrides.append(f"data.path={tmp_path}")
    cfg = compose(overrides)
    validate(cfg)
    if group in ("model", "recipe", "data"):
        assert cfg[group].name == option


def test_attention_files_set_their_activation():
    for option in options("attention"):
        attention = compose([f"attention={option}"]).attention
        if option == "relu_learned":
            assert (attention.activation, attention.learn_alpha) == ("relu", "layer")
        else:
            assert attention.activation == option


def test_recipes_carry_the_paper_values():
    i21k = compose(["recipe=i21k_30ep"]).recipe
    i1k = compose(["recipe=i1k_300ep"]).recipe
    for r in (i21k, i1k):
        assert (r.batch_size, r.lr, r.warmup_steps, r.grad_clip_norm, r.loss) == (4096, 1e-3, 10000, 1.0, "sigmoid")
        assert r.weight_decay * r.lr == pytest.approx(1e-4)  # big_vision's decoupled wd
        assert list(r.betas) == [0.9, 0.999]
    assert (i21k.epochs, i21k.pool, i21k.rep_size, i21k.head_bias_init) == (30, "gap", False, -10.0)
    assert (i1k.epochs, i1k.pool, i1k.rep_size, i1k.head_bias_init) == (300, "tok", True, -6.9)
    assert dict(i21k.augment.l16) == {"randaug_layers": 2, "randaug_magnitude": 15, "mixup": 0.5}
    assert dict(i1k.augment.s32) == {"randaug_layers": 2, "randaug_magnitude": 15, "mixup": 0.2}


def test_model_inherits_data_and_recipe_keys():
    cfg = compose(["recipe=i1k_300ep", "data=digits", "model=mini2"])
    assert (cfg.model.pool, cfg.model.rep_size, cfg.model.head_bias_init) == ("tok", True, -6.9)
    assert (cfg.model.img_size, cfg.model.in_chans, cfg.model.num_classes) == (8, 1, 10)


def test_run_name_is_stable_and_names_the_grid_point():
    cfg = compose(["attention=relu2", "attention.alpha=0.5", "attention.qk_norm=false", "attention.gate=true"])
    assert cfg.run_name == "smoke-animal_mnist/mini4/relu2-a0.5-noqkln-gate-s0"
    assert compose(["attention=softmax", "attention.alpha=0.5"]).run_name == "smoke-animal_mnist/mini4/softmax-s0"
    assert compose(["attention=soft", "attention.soft.sr=4"]).run_name == "smoke-animal_mnist/mini4/soft-sr4-s0"


@pytest.mark.parametrize("overrides,suffix", [
    (["recipe.lr=3e-4"], "+recipe.lr=0.0003"),
    (["recipe.epochs=100", "trainer.precision=32-true"], "+recipe.epochs=100,trainer.precision=32-true"),
    (["model=b16", "model.variant=B/8", "data=digits"], "+model.variant=B_8"),
    (["trainer.devices=1", "logger.project=x", "eval=none", "attention.impl=reference"], ""),  # not training values
])
def test_training_values_that_are_not_grid_keys_suffix_the_run_name(overrides, suffix):
    name = compose(overrides).run_name
    assert name.endswith(suffix) and "+" not in name.removesuffix(suffix)


def test_runs_differing_in_a_training_value_never_share_a_directory():
    dirs = [compose(o).run_dir for o in (["recipe.lr=1e-3"], ["recipe.lr=3e-4"], ["recipe.epochs=100"],
                                         ["trainer.precision=32-true"], ["model=b16", "model.variant=B/8"])]
    assert len(set(dirs)) == len(dirs)
    assert compose(["recipe.lr=1e-3"]).run_dir == compose([]).run_dir  # the recipe's own value: the same run


def test_sweep_syntax_expands_into_points_or_is_refused_for_one_run():
    betas = "recipe.betas=[0.9,0.95]"  # a list value, not a sweep
    assert expand(["seed=0,1", "attention=relu,softmax", betas]) == [
        ["seed=0", "attention=relu", betas], ["seed=0", "attention=softmax", betas],
        ["seed=1", "attention=relu", betas], ["seed=1", "attention=softmax", betas]]
    assert len(expand(["seed=range(0,3)"])) == 3
    with pytest.raises(ConfigError, match="describes 2 runs"):
        compose(["seed=0,1"])


def test_global_batch_by_accumulation():
    cfg = compose(["trainer.accelerator=cpu", "trainer.devices=2", "trainer.micro_batch_size=16"])
    split = micro_batch_size(cfg)
    assert (split.micro_batch_size, split.accumulate) == (16, 4)  # 128 = 2 devices x 16 x 4 steps


# Invalid values, one line naming the key, exit status 2: tests/test_bad_inputs.py.


def test_config_error_names_key():
    with pytest.raises(ConfigError, match="attention.alpha"):
        validate(compose(["attention.alpha=-0.5"]))
