"""ImageNet-ReaL and ImageNet-v2 on a tiny constructed ImageNet (three classes' WordNet folders of ILSVRC2012_val_
images, a real.json, a v2 folder): scores of a stub model with chosen predictions equal hand counts (empty ReaL
lists left out, v2 folders read by number, a 21k label set through the i1k restriction); a run logs both and
``reluvit evaluate`` agrees with a per-image reference; the config errors name their key."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from reluvit.data.labels import wordnet_ids
from reluvit.data.preprocess import EvalTransform
from reluvit.data.shards import write_shards
from reluvit.evaluate.i1k import I1kRestriction, val_number
from reluvit.evaluate.imagenet import RealEvaluation, V2Evaluation, accuracy_counts, read_real_labels, v2_items
from reluvit.run.callbacks import held_out_evaluations
from reluvit.run.checkpoint import load_checkpoint
from reluvit.run.compose import eval_config
from reluvit.run.evaluate import evaluate_run
from reluvit.run.module import ViTClassifier
from reluvit.run.schema import ConfigError
from reluvit.run.train import run
from reluvit.run.validate import validate

pytestmark = pytest.mark.usefixtures("one_thread")
I1K = wordnet_ids("imagenet1k")
# image k of the constructed val set: (its ILSVRC2012 val number, class id of its folder, its ReaL labels, the class
# the stub predicts). The numbers are not in k's order: images are matched to labels by number, not position.
VAL = {1: (17, 3, [3], 3), 2: (3, 3, [3, 7], 7), 3: (49_999, 7, [], 3), 4: (50_000, 7, [7], 3),
       5: (1, 9, [9, 3], 9), 6: (256, 9, [], 9), 7: (1024, 7, [7], 7), 8: (4096, 3, [3], 500), 9: (77, 9, [9], 9)}
# ImageNet-v2 image k: (folder = class id, the class the stub predicts)
V2 = {1: (0, 0), 2: (2, 2), 3: (2, 10), 4: (10, 10), 5: (10, 10), 6: (999, 998)}


def solid(path: Path, k: int) -> None:
    """Image k: one grey level, 20 k, that survives resizing, cropping and (nearly) JPEG."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((12, 16, 3), 20 * k, dtype=np.uint8)).save(path)


def image_index(images: torch.Tensor) -> torch.Tensor:
    """k of each preprocessed image of :func:`solid` (values in [-1, 1])."""
    return ((images.mean((1, 2, 3)) + 1) * 127.5 / 20).round().long()


class Stub(torch.nn.Module):
    """Logits chosen per image: row k of ``table`` for image k."""

    def __init__(self, table: torch.Tensor) -> None:
        super().__init__()
        self.table = table

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.table[image_index(images)]


def stub(predictions: dict[int, int], wnids=I1K) -> Stub:
    """Logits over ``wnids`` whose best i1k class is ``predictions[k]``: where that class is not among ``wnids``, a
    non-i1k class scores higher and class 3 is the best i1k one."""
    table = torch.zeros(max(predictions) + 1, len(wnids))
    column = {w: j for j, w in enumerate(wnids)}
    for k, predicted in predictions.items():
        if I1K[predicted] in column:
            table[k, column[I1K[predicted]]] = 10.0
        else:
            table[k, next(j for j, w in enumerate(wnids) if w not in I1K)] = 20.0
            table[k, column[I1K[3]]] = 5.0
    return Stub(table)


@pytest.fixture(scope="module")
def imagenet(tmp_path_factory) -> Path:
    """``tree/{train,val}/<wnid>/`` (val: ILSVRC2012_val_ names, class 7's as JPEG), its shards, ``real.json``,
    ``v2/<class id>/`` and ``v2_trained/<class id>/``."""
    root = tmp_path_factory.mktemp("imagenet")
    for k, (number, cls, _, _) in VAL.items():
        solid(root / "tree" / "val" / I1K[cls] / f"ILSVRC2012_val_{number:08d}.{'JPEG' if cls == 7 else 'png'}", k)
    for cls in (3, 7, 9):
        for i in range(8):
            solid(root / "tree" / "train" / I1K[cls] / f"{I1K[cls]}_{i}.png", 1 + (cls + i) % 9)
    write_shards(str(root / "tree"), root / "shards", label_set="imagenet1k", progress=False)
    real = [[] for _ in range(50_000)]
    for number, _, labels, _ in VAL.values():
        real[number - 1] = labels
    (root / "real.json").write_text(json.dumps(real))
    for k, (cls, _) in V2.items():
        solid(root / "v2" / str(cls) / f"{k:040x}.jpeg", k)
    for k, (_, cls, _, _) in VAL.items():  # the val images again, as a v2 folder of the classes a run trains on
        solid(root / "v2_trained" / str(cls) / f"{k}.png", k)
    return root


def test_val_numbers_come_from_file_names_and_shard_keys():
    assert val_number("n01440764/ILSVRC2012_val_00000293") == 293
    assert val_number("n01440764_ILSVRC2012_val_00050000") == 50_000  # a shard key: '/' and '.' became '_'
    with pytest.raises(ValueError, match="holds no ILSVRC2012_val_NNNNNNNN number"):
        val_number("n01440764_10026")


@pytest.mark.parametrize("layout", ["tree/val", "tree", "shards"])
def test_real_accuracy_counts_the_images_with_labels(imagenet, layout):
    labels = read_real_labels(imagenet / "real.json")
    assert labels.shape[0] == 50_000 and labels[3 - 1].tolist()[:2] == [3, 7] and (labels[256 - 1] == -1).all()
    evaluation = RealEvaluation(labels, I1kRestriction(I1K), str(imagenet / layout), 8, 3, batch_size=4)
    model = stub({k: predicted for k, (_, _, _, predicted) in VAL.items()})
    # counted: the 7 images with labels (3 and 6 have none); correct: 1, 2 (7 is among [3, 7]), 5, 7, 9
    assert accuracy_counts(model, evaluation, torch.device("cpu")) == (5, 7)
    shares = [accuracy_counts(model, evaluation, torch.device("cpu"), rank, 2) for rank in (0, 1)]
    assert tuple(map(sum, zip(*shares, strict=True))) == (5, 7)  # two ranks score their shares


def test_real_accuracy_of_a_21k_label_set_lacking_a_class(imagenet):
    wnids = [w for w in I1K if w != I1K[9]] + [f"n9{i:07d}" for i in range(20)]
    model = stub({k: predicted for k, (_, _, _, predicted) in VAL.items()}, wnids)
    labels = read_real_labels(imagenet / "real.json")
    counts = {policy: accuracy_counts(model, RealEvaluation(labels, I1kRestriction(wnids, policy),
                                                            str(imagenet / "tree"), 8, 3, 4), torch.device("cpu"))
              for policy in ("wrong", "exclude")}
    # class 9 cannot be predicted: image 5 ([9, 3]) is right by its fallback 3, image 9 ([9]) is wrong, or left out
    # under "exclude" since none of its labels is a class of the label set
    assert counts == {"wrong": (4, 7), "exclude": (4, 6)}


def test_v2_folders_are_class_ids_read_by_number(imagenet):
    assert [it.label for it in v2_items(imagenet / "v2")] == [0, 2, 2, 10, 10, 999]  # not ImageFolder's 0, 1, 2, 3
    evaluation = V2Evaluation(I1kRestriction(I1K), str(imagenet / "v2"), 8, 3, batch_size=4)
    model = stub({k: predicted for k, (_, predicted) in V2.items()})
    assert accuracy_counts(model, evaluation, torch.device("cpu")) == (4, 6)  # 3 (10 for 2) and 6 (998) wrong


def test_malformed_labels_and_folders_are_one_line_errors(imagenet, tmp_path):
    (tmp_path / "short.json").write_text(json.dumps([[1]] * 10))
    (tmp_path / "range.json").write_text(json.dumps([[1000]] * 50_000))
    for name in ("short.json", "range.json"):
        with pytest.raises(ValueError, match=r"is not ImageNet-ReaL's real.json: a list of 50000 lists"):
            read_real_labels(tmp_path / name)
    (tmp_path / "v2" / "n01440764").mkdir(parents=True)
    with pytest.raises(ValueError, match=r"holds \['n01440764'\]: ImageNet-v2 is folders named by class id"):
        v2_items(tmp_path / "v2")


def test_a_run_logs_real_and_v2_and_evaluate_agrees_with_a_per_image_reference(tiny_cfg, imagenet):
    cfg = tiny_cfg("data=shards", f"data.path={imagenet / 'shards'}", "data.num_classes=1000", "data.img_size=8",
                   "data.in_chans=3", "data.num_workers=0", "model=micro2", "recipe.batch_size=8", "recipe.epochs=1",
                   "eval=none", f"eval.real.labels={imagenet / 'real.json'}", f"eval.v2.path={imagenet / 'v2_trained'}")
    summary = run(cfg)
    assert summary["status"] == "completed" and summary["global_step"] == 3
    metrics = summary["metrics"]
    # the reference: the final weights on each image file, one at a time, scored by hand
    checkpoint = load_checkpoint(Path(cfg.run_dir) / "checkpoints" / "last.ckpt")
    module = ViTClassifier(**checkpoint["hyper_parameters"]).eval()
    module.load_state_dict(checkpoint["state_dict"])
    transform = EvalTransform(8, 3)

    def predicted(path: Path) -> int:
        with torch.no_grad():
            return int(module(transform(path.read_bytes())[None]).argmax())

    real = json.loads((imagenet / "real.json").read_text())
    scored = [(predicted(f), real[int(re.search(r"val_(\d+)", f.name)[1]) - 1])
              for f in sorted((imagenet / "tree" / "val").glob("*/*"))]
    expected_real = np.mean([p in labels for p, labels in scored if labels])
    expected_v2 = np.mean([predicted(f) == int(f.parent.name) for f in (imagenet / "v2_trained").glob("*/*")])
    assert 0 < expected_real < 1 and 0 < expected_v2 < 1
    assert metrics["val/real_acc"] == pytest.approx(expected_real)
    assert metrics["val/v2_acc"] == pytest.approx(expected_v2)
    again = evaluate_run(cfg.run_dir, eval_config(["eval=none", f"eval.real.labels={imagenet / 'real.json'}",
                                                   f"eval.v2.path={imagenet / 'v2_trained'}"]))
    assert again == pytest.approx({"val/real_acc": expected_real, "val/v2_acc": expected_v2})


def test_runs_without_imagenet_classes_skip_real_and_v2(tiny_cfg, imagenet):
    cfg = tiny_cfg("eval=none", f"eval.real.labels={imagenet / 'real.json'}", f"eval.v2.path={imagenet / 'v2'}")
    validate(cfg)  # the environment variables may be set for every run: digits has no ImageNet classes to score
    assert held_out_evaluations(cfg, 8) == []


@pytest.mark.parametrize("overrides,key,message", [
    (["eval.real.labels={root}/missing.json"], "eval.real.labels", "cannot read it"),
    (["eval.real.labels={root}/tree/val/{wnid}/ILSVRC2012_val_00000017.png"], "eval.real.labels",
     "is not readable JSON"),
    (["eval.v2.path={root}/tree"], "eval.v2.path", r"holds \['train', 'val'\]"),
    (["eval.v2.path={root}/nowhere"], "eval.v2.path", "is not a directory"),
])
def test_invalid_imagenet_evals_name_the_key(tiny_cfg, imagenet, overrides, key, message):
    values = {"real": imagenet / "real.json", "root": imagenet, "wnid": I1K[3]}
    with pytest.raises(ConfigError, match=rf"^{key}: .*{message}"):
        validate(tiny_cfg("eval=none", *(o.format(**values) for o in overrides)))


def test_a_21k_run_needs_the_i1k_images_for_real(tiny_cfg, imagenet, tmp_path):
    (tmp_path / "src" / "train" / I1K[3]).mkdir(parents=True)
    (tmp_path / "src" / "train" / "n99999999").mkdir(parents=True)
    solid(tmp_path / "src" / "train" / I1K[3] / "a.png", 1)
    solid(tmp_path / "src" / "train" / "n99999999" / "b.png", 2)
    write_shards(str(tmp_path / "src"), tmp_path / "shards", val_count=1, progress=False)  # WordNet ids, not i1k's
    shards = ["data=shards", f"data.path={tmp_path / 'shards'}", "data.num_classes=2", "data.img_size=8",
              "data.in_chans=3", "eval=none", f"eval.real.labels={imagenet / 'real.json'}"]
    with pytest.raises(ConfigError, match=r"^eval.i1k.path: ReaL of a run on a 21k label set"):
        validate(tiny_cfg(*shards))
    validate(tiny_cfg(*shards, f"eval.i1k.path={imagenet / 'tree'}"))
    validate(tiny_cfg(*shards[:1], "data.path=/no/such/shards", *shards[2:]), data_path=False)  # no data: no check
