"""Bad inputs to ``reluvit train`` (issue #13): each exits with status 2 and one line of stderr naming the key,
before anything is written; the edge values next to them pass."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from reluvit import cli
from reluvit.run.compose import compose
from reluvit.run.schema import ConfigError
from reluvit.run.validate import validate

BASE = ["model=micro1", "recipe=smoke", "eval=none", "data=digits"]  # the smallest run: validation fails first
DATA_VARIABLES = ("RELUVIT_IMAGENET1K", "RELUVIT_IMAGENET21K")

# (overrides, the key the error names, a fragment of its message)
BAD = [
    # recipe values ViTClassifier takes (its constructor refuses them)
    ("recipe.lr=-1", "recipe.lr", "-1.0 is not > 0"),
    ("recipe.lr=0", "recipe.lr", "> 0"),
    ("recipe.lr=inf", "recipe.lr", "finite"),
    ("recipe.lr=nan", "recipe.lr", "nan"),
    ("recipe.lr=abc", "recipe.lr", "Float"),
    ("recipe.betas=[0.9,1.5]", "recipe.betas", "[0, 1)"),
    ("recipe.betas=[-0.1,0.999]", "recipe.betas", "[0, 1)"),
    ("recipe.betas=[0.9,1.0]", "recipe.betas", "[0, 1)"),
    ("recipe.betas=[0.9]", "recipe.betas", "two values"),
    ("recipe.eps=0", "recipe.eps", "> 0"),
    ("recipe.weight_decay=-0.1", "recipe.weight_decay", ">= 0"),
    ("recipe.warmup_steps=-1", "recipe.warmup_steps", ">= 0"),
    ("recipe.loss=hinge", "recipe.loss", "sigmoid"),
    ("recipe.augment.default.mixup=-0.5", "recipe.augment.default.mixup", ">= 0"),
    # recipe values only validate sees
    ("recipe.epochs=0", "recipe.epochs", ">= 1"),
    ("recipe.epochs=2.5", "recipe.epochs", "Integer"),
    ("recipe.batch_size=0", "recipe.batch_size", ">= 1"),
    ("recipe.grad_clip_norm=-1", "recipe.grad_clip_norm", "> 0 or null"),
    ("recipe.grad_clip_norm=0", "recipe.grad_clip_norm", "> 0 or null"),
    ("recipe.augment.default.randaug_layers=-1", "recipe.augment.default.randaug_layers", ">= 0"),
    ("recipe.augment_impl=tf", "recipe.augment_impl", "'tf' is not one of: big_vision, timm"),
    ("recipe.augment.default.randaug_magnitude=-3", "recipe.augment.default.randaug_magnitude", ">= 0"),
    # the model: create_model's arguments, named by the keys the model config interpolates
    ("model=s99", "model", "micro1"),
    ("model.variant=X/4", "model.variant", "Ti"),
    ("model.variant=micro/0", "model.variant", "<size>/<patch>"),
    ("model=s16", "model.variant", "does not divide"),
    ("recipe.pool=max", "recipe.pool", "gap"),
    ("recipe.head_bias_init=nan", "recipe.head_bias_init", "finite"),
    ("data.img_size=0", "data.img_size", ">= 1"),
    ("data.num_classes=0", "data.num_classes", ">= 1"),
    ("data.in_chans=0", "data.in_chans", ">= 1"),
    ("model.num_classes=-3", "model.num_classes", ">= 1"),
    # attention (attention_layer, PointwiseAttention, SoftAttention)
    ("attention.activation=relu3", "attention.activation", "relu2"),
    ("attention.alpha=-1", "attention.alpha", ">= 0"),
    ("attention.alpha=inf", "attention.alpha", "finite"),
    ("attention.alpha=abc", "attention.alpha", "Float"),
    ("attention.gate_activation=tanh", "attention.gate_activation", "silu"),
    ("attention.gelu_approximate=fast", "attention.gelu_approximate", "tanh"),
    ("attention.seq_len=queries", "attention.seq_len", "patches"),
    ("attention.impl=cuda", "attention.impl", "reference"),
    ("attention=sigmoid_attn attention.sigmoid_bias=inf", "attention.sigmoid_bias", "finite"),
    ("attention.learn_alpha=layer attention.alpha=0", "attention.alpha", "starts > 0"),
    ("attention=softmax attention.learn_alpha=head", "attention.learn_alpha", "point-wise"),
    ("attention=gelu attention.impl=fused", "attention.impl", "relu"),
    ("attention=soft attention.gate=true", "attention.gate", "no gate"),
    ("attention=soft attention.soft.local_kernel=2", "attention.soft.local_kernel", "odd"),
    ("attention=soft attention.soft.sr=0", "attention.soft.sr", ">= 1"),
    ("attention=soft attention.soft.newton_iters=-1", "attention.soft.newton_iters", ">= 0"),
    ("attention.alpah=1", "attention.alpah", "AttentionConfig"),
    # booleans are true or false, nothing OmegaConf would turn into one
    ("attention.qk_norm=2", "attention.qk_norm", "true or false"),
    ("attention.qk_norm=yes", "attention.qk_norm", "true or false"),
    ("attention.gate=1", "attention.gate", "true or false"),
    ("attention=soft attention.soft.sym_norm=on", "attention.soft.sym_norm", "true or false"),
    ("trainer.deterministic=maybe", "trainer.deterministic", "true or false"),
    ("trainer.enable_progress_bar=0", "trainer.enable_progress_bar", "true or false"),
    ("logger.wandb=2", "logger.wandb", "true or false"),
    ("recipe.rep_size=no", "recipe.rep_size", "true or false"),
    ("resume=1", "resume", "true or false"),
    # the trainer: Lightning's names, counts, the batch split
    ("trainer.devices=0", "trainer.devices", "a count >= 1"),
    ("trainer.devices=-2", "trainer.devices", "a count >= 1"),
    ("trainer.devices=1.5", "trainer.devices", "a count >= 1"),
    ("trainer.devices=[]", "trainer.devices", "device ids"),
    ("trainer.devices=[0,0]", "trainer.devices", "device ids"),
    ("trainer.devices=[-1]", "trainer.devices", "device ids"),
    ("trainer.devices='a,b'", "trainer.devices", "device ids"),
    ("trainer.devices='0'", "trainer.devices", "a count >= 1"),
    ("trainer.accelerator=cpu trainer.devices=[0,1]", "trainer.devices", "CPU"),
    ("trainer.accelerator=cpu trainer.devices=3", "recipe.batch_size", "divisible"),
    ("trainer.num_nodes=0", "trainer.num_nodes", ">= 1"),
    ("trainer.micro_batch_size=0", "trainer.micro_batch_size", ">= 1 or null"),
    ("trainer.micro_batch_size=-16", "trainer.micro_batch_size", ">= 1 or null"),
    ("trainer.micro_batch_size=48", "trainer.micro_batch_size", "does not divide"),
    ("trainer.micro_batch_size=big", "trainer.micro_batch_size", "'big' is not 'auto' or an integer >= 1 or null"),
    ("trainer.grad_checkpointing=1", "trainer.grad_checkpointing", "1 is not auto, true or false"),
    ("trainer.grad_checkpointing=always", "trainer.grad_checkpointing", "auto, true or false"),
    ("trainer.max_steps=0", "trainer.max_steps", "-1 or an integer >= 1"),
    ("trainer.max_steps=-5", "trainer.max_steps", "-1 or an integer >= 1"),
    ("trainer.check_val_every_n_epoch=0", "trainer.check_val_every_n_epoch", ">= 1"),
    ("trainer.log_every_n_steps=0", "trainer.log_every_n_steps", ">= 1"),
    ("trainer.precision=fp13", "trainer.precision", "bf16-mixed"),
    ("trainer.accelerator=gpus", "trainer.accelerator", "cuda"),
    ("trainer.strategy=dpp", "trainer.strategy", "ddp"),
    ("trainer.compile=maybe", "trainer.compile", "auto, true or false"),
    # seeds: what the RNGs accept
    ("seed=-1", "seed", "[0, 4294967295]"),
    ("seed=4294967296", "seed", "[0, 4294967295]"),
    ("seed=null", "seed", "not Optional"),
    ("data.split_seed=-1", "data.split_seed", "[0, 4294967295]"),
    # data
    ("data=nope", "data", "digits"),
    ("data.dataset=mnist", "data.dataset", "digits"),
    ("data.max_bad_fraction=1", "data.max_bad_fraction", "[0, 1)"),
    ("data.max_bad_fraction=-0.1", "data.max_bad_fraction", "[0, 1)"),
    ("data.num_workers=-1", "data.num_workers", ">= 0"),
    ("data.shuffle_buffer=0", "data.shuffle_buffer", ">= 1"),
    ("data.stream_slots=0", "data.stream_slots", ">= 1"),
    ("data.val_size=0", "data.val_size", ">= 1 or null"),
    ("data=imagefolder data.num_classes=10", "data.path", "data.path=..."),
    ("data=imagefolder data.num_classes=10 data.path=/no/such/dir", "data.path", "/no/such/dir"),
    ("data=shards data.path=/nonexistent", "data.path", "_info.json"),
    ("data=shards", "data.path", "data.path=..."),
    ("data=imagenet1k", "data.path", "set RELUVIT_IMAGENET1K or data.path=..."),
    ("data=imagenet21k", "data.path", "set RELUVIT_IMAGENET21K or data.path=..."),
    # logger
    ("logger.wandb_mode=sometimes", "logger.wandb_mode", "offline"),
    ("logger=wandb logger.wandb_mode=ONLINE", "logger.wandb_mode", "online"),
    ("logger=nope", "logger", "wandb"),
    # eval
    ("eval=nope", "eval", "embedded"),
    ("eval.fewshot.shots=[0]", "eval.fewshot.shots", ">= 1"),
    ("eval.fewshot.shots=[]", "eval.fewshot.shots", "non-empty"),
    ("eval.fewshot.seeds=[-1]", "eval.fewshot.seeds", "[0, 4294967295]"),
    ("eval.fewshot.seeds=[]", "eval.fewshot.seeds", "non-empty"),
    ("eval.fewshot.l2=0", "eval.fewshot.l2", "> 0"),
    ("eval.fewshot.l2_grid=[1,-1]", "eval.fewshot.l2_grid", "> 0"),
    ("eval.fewshot.every_n_steps=-1", "eval.fewshot.every_n_steps", ">= 0"),
    ("eval.fewshot.batch_size=0", "eval.fewshot.batch_size", ">= 1"),
    ("eval.fewshot.num_workers=-1", "eval.fewshot.num_workers", ">= 0"),
    ("eval.fewshot.datasets=[mnist]", "eval.fewshot.datasets", "birds"),
    ("eval.i1k.missing=ignore", "eval.i1k.missing", "exclude"),
    ("eval.i1k.label_set=nope", "eval.i1k.label_set", "nope"),
    ("eval.i1k.path=/no/such/dir", "eval.i1k.path", "not a directory"),
    # keys that do not exist, added or deleted
    ("+unknown_key=1", "unknown_key", "no such config key"),
    ("+trainer.compile=true", "trainer.compile", "without `+`"),
    ("+data.foo=1", "data.foo", "no such config key"),
    ("trainer.compil=true", "trainer.compil", "TrainerConfig"),
    ("+seed=1", "seed", "without `+`"),
    ("~seed", "seed", "cannot be deleted"),
    ("~recipe.lr", "recipe.lr", "cannot be deleted"),
    # where the run would be written
    ("runs_dir=/proc/x", "runs_dir", "/proc"),
    ("runs_dir=/dev/null/x", "runs_dir", "not a directory"),
    ("run_dir=/proc/y", "run_dir", "/proc"),
]


@pytest.fixture
def no_data_variables(monkeypatch):
    for name in DATA_VARIABLES:
        monkeypatch.delenv(name, raising=False)


def assert_refused(overrides: list[str], key: str, hint: str, capsys, runs_dir: Path) -> None:
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["train", *BASE, f"runs_dir={runs_dir}", *overrides])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert err.startswith(f"reluvit: config error: {key}: "), err
    assert hint in err, err
    assert not any(runs_dir.iterdir())  # nothing written


@pytest.mark.usefixtures("no_data_variables")
@pytest.mark.parametrize("overrides,key,hint", BAD, ids=[case[0] for case in BAD])
def test_bad_input_exits_2_naming_the_key(overrides, key, hint, capsys, tmp_path):
    assert_refused(overrides.split(), key, hint, capsys, tmp_path)


def test_the_table_is_broad():
    assert len(BAD) >= 45 and len({case[0] for case in BAD}) == len(BAD)


def test_runs_dir_under_a_file_is_refused(capsys, tmp_path):
    (tmp_path / "file").write_text("")
    runs = tmp_path / "runs"
    runs.mkdir()
    assert_refused([f"runs_dir={tmp_path / 'file' / 'x'}"], "runs_dir", "is not a directory", capsys, runs)


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only directories")
def test_runs_dir_under_a_read_only_dir_is_refused(capsys, tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o555)
    runs = tmp_path / "runs"
    runs.mkdir()
    try:
        assert_refused([f"runs_dir={locked / 'x'}"], "runs_dir", "not writable", capsys, runs)
    finally:
        locked.chmod(0o755)


def test_a_dataset_path_from_the_environment_names_the_variable(capsys, tmp_path, monkeypatch):
    monkeypatch.setenv("RELUVIT_IMAGENET1K", str(tmp_path / "missing"))
    runs = tmp_path / "runs"
    runs.mkdir()
    assert_refused(["data=imagenet1k"], "data.path", "(from RELUVIT_IMAGENET1K)", capsys, runs)


@pytest.mark.parametrize("bad,key", [
    ("attention.alpha=-1", "attention.alpha"),
    ("attention.gelu_approximate=fast", "attention.gelu_approximate"),
    ("attention.seq_len=queries", "attention.seq_len"),
])
def test_a_bad_value_option_is_refused_after_a_good_point_of_the_same_model(bad, key, tmp_path):
    """Points that differ only in the attention's value options build the model once (validate._build_on_meta):
    the later point's options are still checked, with the same key."""
    good = ["attention=gelu", "attention.alpha=0.5", f"runs_dir={tmp_path}"]
    validate(compose([*BASE, *good]))
    with pytest.raises(ConfigError) as error:
        validate(compose([*BASE, *good, bad]))
    assert error.value.key == key


@pytest.mark.parametrize("overrides,key", [
    (["seed=0,1"], "seed"),
    (["attention.alpha=range(0,3)"], "attention.alpha"),
    (["attention=relu,softmax"], "attention"),
])
def test_sweep_syntax_is_refused_for_one_run(overrides, key):
    with pytest.raises(ConfigError, match="describes") as error:
        compose([*BASE, *overrides])
    assert error.value.key == key


@pytest.mark.parametrize("overrides,key", [
    ("attention.qk_norm=2", "attention.qk_norm"),
    ("+unknown_key=1", "unknown_key"),
    ("data=imagenet1k", "data.path"),
])
def test_the_console_entry_prints_one_line(overrides, key, tmp_path):
    """The real entry point, in a fresh process: status 2, one line of stderr, no run directory."""
    env = {k: v for k, v in os.environ.items() if k not in DATA_VARIABLES}
    result = subprocess.run([sys.executable, "-m", "reluvit", "train", *BASE, *overrides.split(),
                             f"runs_dir={tmp_path}"], capture_output=True, text=True, timeout=120, env=env)
    assert result.returncode == 2, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert f"config error: {key}: " in result.stderr
    assert not any(tmp_path.iterdir())


GOOD = [
    "recipe.warmup_steps=0",
    "recipe.grad_clip_norm=null",
    "recipe.weight_decay=0",
    "recipe.betas=[0,0.999]",
    "recipe.augment.default.mixup=0",
    "recipe.augment.default.mixup=0.5",
    "trainer.devices=auto",
    "trainer.devices=1",
    "trainer.devices='1'",
    "trainer.devices=-1",
    "trainer.devices=[0,1]",
    "trainer.devices='0,1'",
    "trainer.accelerator=cpu trainer.devices=2",
    "trainer.max_steps=-1",
    "trainer.max_steps=1",
    "trainer.micro_batch_size=null",
    "trainer.micro_batch_size=128",
    "trainer.micro_batch_size=auto",
    "trainer.grad_checkpointing=true",
    "trainer.grad_checkpointing=false",
    "trainer.precision=32",
    "trainer.precision=bf16-mixed",
    "seed=0",
    "seed=4294967295",
    "data.split_seed=0",
    "data.max_bad_fraction=0",
    "data.num_workers=0",
    "data.val_size=null",
    "attention.qk_norm=false",
    "attention.qk_norm=True",
    "attention.alpha=0",
    "attention=sigmoid_attn attention.sigmoid_bias=null",
    "attention=sigmoid_attn attention.sigmoid_bias=-2.5",
    "attention=soft attention.soft.sr=1 attention.soft.local_kernel=0",
    "logger.wandb_mode=disabled",
    "eval.fewshot.every_n_steps=0",
    "eval.fewshot.l2_grid=null",
    "++seed=3",
    "+eval.fewshot.paths.extra=/somewhere",
]


@pytest.mark.parametrize("overrides", GOOD)
def test_edge_values_pass(overrides, tmp_path):
    validate(compose([*BASE, *overrides.split(), f"runs_dir={tmp_path / 'runs'}"]))
    assert not any(tmp_path.iterdir())


# cluster profiles (slurm/profiles/*.yaml or a file anywhere) and the launch options, refused before composing
PROFILES = [
    ("partition: gpu\ngpus_per_nod: 4\n", "bad.yaml", "unknown keys ['gpus_per_nod']"),
    ("gpus_per_node: 4\n", "bad.yaml: partition", "a partition is required"),
    ("partition: gpu\ngpus_by_size: {XL: 2}\n", "bad.yaml: gpus_by_size", "unknown model sizes ['XL']"),
    ("partition: gpu\ngpus_by_size: {B: 0}\n", "bad.yaml: gpus_by_size", "an integer >= 1"),
    ("partition: gpu\ngpu_tflops: -5\n", "bad.yaml: gpu_tflops", "> 0 or null"),
    ("partition: gpu\nslurm_additional_parameters: [exclusive]\n", "bad.yaml: slurm_additional_parameters",
     "mapping"),
    ("partition: gpu\ngpus_by_size: null\n", "bad.yaml: gpus_by_size", "None is not a mapping"),
    ("partition: gpu\ngpus_per_node: 8\ngpus_by_size: {micro: 3}\n", "gpus_by_size",
     "3 GPUs for micro/1 do not divide the global batch recipe.batch_size=128"),
]


@pytest.mark.parametrize("profile,key,hint", PROFILES, ids=[case[1] + ":" + case[2] for case in PROFILES])
def test_a_bad_profile_exits_2_naming_the_key(profile, key, hint, capsys, tmp_path):
    (tmp_path / "bad.yaml").write_text(profile)
    runs = tmp_path / "runs"
    runs.mkdir()
    assert_refused(["--dry-run", "--cluster", str(tmp_path / "bad.yaml")], key, hint, capsys, runs)


@pytest.mark.parametrize("options,key,hint", [
    (["--launcher", "slurm", "--cluster", "/no/such/profile.yaml"], "CLUSTER", "no profile /no/such/profile.yaml"),
    (["--launcher", "slurm", "--cluster", "nowhere"], "CLUSTER", "known: example_gpu, local"),
    (["--no-wait"], "--no-wait", "--launcher slurm"),
    (["--launcher", "slurm", "--no-wait", "--dry-run"], "--no-wait", "no --dry-run"),
])
def test_bad_launch_options_exit_2(options, key, hint, capsys, tmp_path):
    assert_refused(options, key, hint, capsys, tmp_path)
