"""Faults that ended a run ``completed`` with a wrong result, or crashed where one line was promised: an ImageFolder
``val/`` with other classes than ``train/`` (labels shifted), bad images in a tree, a checkpoint of another run or
architecture, SIGTERM on a local run, a run name too long for a file name."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import TINY
from reluvit.data.datamodules import FolderImages, ImageFolderDataModule, tree_classes
from reluvit.data.preprocess import EvalTransform
from reluvit.data.stream import BadDataError
from reluvit.run.compose import compose
from reluvit.run.schema import ConfigError
from reluvit.run.validate import validate


def _images(folder: Path, count: int, seed: int) -> None:
    """``count`` small JPEGs in ``folder``, each one colour (a class's images differ from the others')."""
    folder.mkdir(parents=True)
    for i in range(count):
        Image.new("RGB", (24, 20), (seed * 40 % 256, i * 20 % 256, 90)).save(folder / f"{i:03d}.jpg", quality=95)


def tree(root: Path, train: tuple[str, ...], val: tuple[str, ...], per_class: int = 4) -> Path:
    for c, name in enumerate(train):
        _images(root / "train" / name, per_class, seed=c)
    for c, name in enumerate(val):
        _images(root / "val" / name, 2, seed=10 + c)
    return root


def folder_overrides(root: Path, num_classes: int) -> list[str]:
    return [*TINY, "data=imagefolder", f"data.path={root}", f"data.num_classes={num_classes}", "data.img_size=16",
            "data.in_chans=3", "data.num_workers=0"]


def test_validation_labels_are_the_training_class_indices(tmp_path):
    """val/ lacking a class: its other classes keep train's indices (emu is 2, not 1 as val's own listing would say)."""
    root = tree(tmp_path, ("cat", "dog", "emu"), ("cat", "emu"))
    module = ImageFolderDataModule(str(root), 2, img_size=16, num_workers=0, num_classes=3)
    module.setup()
    labels = {Path(path).parent.name: label for path, label in module.val_set.files}
    assert labels == {"cat": 0, "emu": 2}
    assert [module.val_set[i][1] for i in range(len(module.val_set))] == [0, 0, 2, 2]


@pytest.mark.parametrize("val,num_classes,message", [
    (("cat", "emu", "fox"), 3, "val has classes that {root}/train has not: fox"),
    (("cat",), 4, "{root}/train has 3 class folders, the config data.num_classes=4"),
])
def test_a_tree_the_model_cannot_score_is_refused_before_training(tmp_path, val, num_classes, message):
    root = tree(tmp_path, ("cat", "dog", "emu"), val)
    with pytest.raises(ConfigError) as error:
        validate(compose([*folder_overrides(root, num_classes), f"runs_dir={tmp_path / 'runs'}"]))
    assert error.value.key == "data.path" and message.format(root=root) in str(error.value)
    assert "\n" not in str(error.value)
    with pytest.raises(ValueError, match="fox" if "fox" in message else "num_classes=4"):
        tree_classes(root, num_classes)


def test_bad_images_in_a_tree_are_replaced_counted_and_named(tmp_path, caplog):
    """A zero-byte and a truncated JPEG: each read gives the next image instead, with a warning naming the file; more
    than max_bad_fraction of them stop the run naming the last."""
    root = tree(tmp_path, ("cat", "dog"), ("cat", "dog"))
    files = sorted((root / "train").rglob("*.jpg"))
    files[1].write_bytes(b"")
    files[5].write_bytes(files[5].read_bytes()[:40])
    module = ImageFolderDataModule(str(root), 2, img_size=16, num_workers=0, num_classes=2, max_bad_fraction=0.25)
    module.setup()
    images = module.train_set
    good = FolderImages([(str(files[2]), 0)], np.arange(1), EvalTransform(16))[0][0]
    with caplog.at_level(logging.WARNING):
        assert torch.equal(FolderImages(images.files, images.indices, EvalTransform(16), 0.25)[1][0], good)
        items = [images[i] for i in range(len(images))]
    assert len(items) == 8 and images.bad.value == 2
    assert str(files[1]) in caplog.text and str(files[5]) in caplog.text
    strict = FolderImages(images.files, images.indices, EvalTransform(16), max_bad_fraction=0.1)
    strict[0]
    with pytest.raises(BadDataError, match=f"more than max_bad_fraction=0.1 of 8 allows; the last: {files[1]}"):
        strict[1]


def test_a_tree_with_a_bad_image_trains_to_the_end(tmp_path):
    from reluvit.run.train import run

    root = tree(tmp_path, ("cat", "dog", "emu"), ("cat", "emu"), per_class=6)
    next((root / "train" / "dog").iterdir()).write_bytes(b"not a jpeg")
    summary = run(compose([*folder_overrides(root, 3), "trainer.max_steps=3", "data.max_bad_fraction=0.1",
                           f"runs_dir={tmp_path / 'runs'}"]))
    assert summary["status"] == "completed"



@pytest.fixture(scope="module")
def two_runs(tmp_path_factory):
    """A softmax and a relu run of the tiny model, 2 steps each, and their overrides."""
    from reluvit.run.train import run

    folder = tmp_path_factory.mktemp("runs")
    overrides = {attention: [*TINY, f"attention={attention}", "trainer.max_steps=2", "eval=none",
                             f"runs_dir={folder}"] for attention in ("softmax", "relu")}
    return {attention: (run(compose(o)), o) for attention, o in overrides.items()}


def foreign_checkpoint(two_runs, tmp_path, strip_record: bool = False, other: str = "softmax") -> tuple[Path, list]:
    """A copy of the relu run, interrupted, whose last.ckpt is the softmax run's (its record stripped: a checkpoint
    written before checkpoints recorded their run)."""
    from reluvit.run.checkpoint import RUN_KEY, load_checkpoint
    from reluvit.run.rundir import last_checkpoint, write_json_atomic

    summary, overrides = two_runs["relu"]
    run_dir = tmp_path / "relu"
    shutil.copytree(summary["run_dir"], run_dir)
    write_json_atomic(run_dir / "summary.json", {**summary, "run_dir": str(run_dir), "status": "running"})
    theirs = load_checkpoint(last_checkpoint(two_runs[other][0]["run_dir"]))
    if strip_record:
        del theirs[RUN_KEY]
    torch.save(theirs, last_checkpoint(run_dir))
    return run_dir, [*overrides, f"run_dir={run_dir}"]


def test_another_runs_checkpoint_is_refused_on_resume_and_evaluate(two_runs, tmp_path, capsys):
    from reluvit import cli

    run_dir, overrides = foreign_checkpoint(two_runs, tmp_path)
    before = (run_dir / "summary.json").read_text()
    for command in (["train", *overrides], ["evaluate", str(run_dir), "eval=none"]):
        with pytest.raises(SystemExit) as exit_info:
            cli.main(command)
        err = capsys.readouterr().err.strip()
        assert exit_info.value.code == 2 and len(err.splitlines()) == 1
        assert f"is run {two_runs['softmax'][0]['run_name']}'s checkpoint" in err
        assert f"not {two_runs['relu'][0]['run_name']}'s" in err
    assert (run_dir / "summary.json").read_text() == before  # nothing trained, nothing evaluated into it


def test_a_checkpoint_of_another_architecture_without_a_record_is_refused(two_runs, tmp_path, capsys):
    from reluvit import cli

    run_dir, overrides = foreign_checkpoint(two_runs, tmp_path, strip_record=True)
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["train", *overrides])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and "holds a model of another architecture: attention.activation 'softmax' " \
        "(this run: 'relu')" in err


def test_a_corrupt_checkpoint_is_one_line_on_resume_and_evaluate(two_runs, tmp_path, capsys):
    from reluvit import cli
    from reluvit.run.rundir import last_checkpoint

    run_dir, overrides = foreign_checkpoint(two_runs, tmp_path, other="relu")
    last_checkpoint(run_dir).write_bytes(last_checkpoint(run_dir).read_bytes()[:2000])
    for command in (["train", *overrides], ["evaluate", str(run_dir)]):
        with pytest.raises(SystemExit) as exit_info:
            cli.main(command)
        err = capsys.readouterr().err.strip()
        assert exit_info.value.code == 2 and len(err.splitlines()) == 1 and "unreadable, truncated or corrupt" in err


def test_sigterm_on_a_local_run_checkpoints_and_exits_143(tmp_path):
    """Outside SLURM, SIGTERM (a terminal, docker stop) is a checkpoint at the next step and exit status 143; the run
    is interrupted, and running it again resumes and completes. (Bit-exact resumption: tests/test_resume.py.)"""
    import json
    import subprocess
    import sys

    from reluvit.run.lock import live_status
    from reluvit.run.rundir import last_checkpoint, read_summary

    overrides = [*TINY, "trainer.max_steps=8", "eval=none", f"runs_dir={tmp_path}"]
    harness = Path(__file__).with_name("interrupt.py")
    stopped = subprocess.run([sys.executable, str(harness), json.dumps(overrides), "term", "step", "3"],
                             capture_output=True, text=True, timeout=300)
    run_dir = compose(overrides).run_dir
    assert stopped.returncode == 143, stopped.stderr[-2000:]
    assert torch.load(last_checkpoint(run_dir), weights_only=True)["global_step"] == 4
    assert live_status(read_summary(run_dir)["status"], run_dir) == "interrupted"
    resumed = subprocess.run([sys.executable, str(harness), json.dumps(overrides), "none", "-", "0"],
                             capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0 and read_summary(run_dir)["status"] == "completed"


def test_a_multi_point_command_stopped_by_a_signal_names_the_points_it_did_not_reach(monkeypatch, caplog):
    from reluvit.run import train
    from reluvit.sweep import execute

    points = [execute.Point([f"seed={seed}"], compose([*TINY, f"seed={seed}"])) for seed in range(5)]
    monkeypatch.setattr(train, "run", lambda cfg: (_ for _ in ()).throw(SystemExit(143)))
    with pytest.raises(SystemExit) as exit_info:
        execute.run_here(points)
    assert exit_info.value.code == 143
    assert f"interrupted in {points[0].name}; 4 runs not reached: {points[1].name}, {points[2].name}, " \
           f"{points[3].name} and 1 more (run the command again to go on)" in caplog.text


def test_a_full_disk_names_the_file_and_leaves_no_partial_files(two_runs, tmp_path, monkeypatch):
    """A checkpoint or summary write that fails (ENOSPC) names the file, removes its partial file (its space goes
    back) and keeps the previous one; a run that hits it mid-training is recorded failed with that line."""
    import errno

    from reluvit.run.checkpoint import CheckpointError, save_atomically
    from reluvit.run.rundir import write_json_atomic
    from reluvit.run.train import run

    save = torch.save

    def full(obj, f, *args, **kwargs):
        Path(f).write_bytes(b"half a checkpoint")
        raise RuntimeError("[enforce fail at inline_container.cc:664] . unexpected pos 64 vs 0")

    target = tmp_path / "last.ckpt"
    save({"old": 1}, target)
    monkeypatch.setattr(torch, "save", full)
    with pytest.raises(CheckpointError, match=f"^{target}: could not be written .*; the previous checkpoint is kept"):
        save_atomically({"new": 2}, target)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.ckpt"]
    monkeypatch.setattr(torch, "save", save)
    assert torch.load(target, weights_only=True) == {"old": 1}

    def no_space(self, *args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(Path, "write_text", no_space)
    with pytest.raises(OSError, match=f"{tmp_path / 'summary.json'} could not be written: No space left on device"):
        write_json_atomic(tmp_path / "summary.json", {"status": "running"})
    monkeypatch.undo()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.ckpt"]

    calls = []

    def full_on_the_second_save(obj, f, *args, **kwargs):
        calls.append(f)
        return full(obj, f) if len(calls) == 2 else save(obj, f, *args, **kwargs)

    monkeypatch.setattr(torch, "save", full_on_the_second_save)
    overrides = [*TINY, "trainer.max_steps=60", "eval=none", f"runs_dir={tmp_path / 'runs'}"]
    with pytest.raises(CheckpointError):
        run(compose(overrides))
    from reluvit.run.rundir import read_summary

    summary = read_summary(compose(overrides).run_dir)
    assert summary["status"] == "failed" and "last.ckpt: could not be written" in summary["error"]
    assert not list(Path(compose(overrides).run_dir).rglob("*.partial"))


def test_a_run_name_longer_than_a_file_name_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match=r"^run_name: x{40}\.\.\. \(300 bytes\) is longer than a file name can be"):
        validate(compose([*TINY, f"run_name={'x' * 300}", f"runs_dir={tmp_path}"]))
