"""Evaluation: the ridge solver against float64 references in both regimes, big_vision's few-shot draw, the probe on
the embedded datasets, the i1k restriction on a constructed label set, the transfer-set formats, and real runs
that write the metrics into summary.json, the roll-up and ``reluvit evaluate``."""

from __future__ import annotations

import json
import random
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from sklearn.linear_model import Ridge

from reluvit.data.embedded import EMBEDDED
from reluvit.data.labels import wordnet_ids
from reluvit.data.shards import write_shards
from reluvit.evaluate import transfer
from reluvit.evaluate.fewshot import (
    FewshotEvaluator,
    MissingTransferSet,
    choose_l2,
    extract_features,
    fewshot_indices,
    fewshot_metrics,
)
from reluvit.evaluate.i1k import I1kRestriction
from reluvit.evaluate.ridge import BIAS, probe_accuracies, ridge_weights, standardise
from reluvit.models import create_model
from reluvit.report.plots import aggregate
from reluvit.report.rollup import rollup
from reluvit.run.compose import eval_config
from reluvit.run.evaluate import evaluate_run
from reluvit.run.train import run

pytestmark = pytest.mark.usefixtures("one_thread")


# --- ridge regression -------------------------------------------------------------------------------------------
@pytest.mark.parametrize("n,d", [(300, 40), (30, 200)], ids=["primal N>D", "dual N<D"])
def test_ridge_matches_float64_references(n, d):
    gen = np.random.default_rng(0)
    x, x_test = gen.normal(2.0, 3.0, (n, d)), gen.normal(2.0, 3.0, (7, d))
    y = 2.0 * np.eye(5)[gen.integers(0, 5, n)] - 1.0
    xs, xs_test = standardise(torch.from_numpy(x).float(), torch.from_numpy(x_test).float())
    # standardisation: the few-shot set's mean and population std + 1e-5, then the constant feature 100
    mean, std = x.astype(np.float32).mean(0), x.astype(np.float32).std(0) + 1e-5
    ref = np.hstack([(x.astype(np.float32) - mean) / std, np.full((n, 1), BIAS)])
    ref_test = np.hstack([(x_test.astype(np.float32) - mean) / std, np.full((7, 1), BIAS)])
    np.testing.assert_allclose(xs.numpy(), ref, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(xs_test.numpy(), ref_test, rtol=1e-5, atol=1e-5)
    for l2, w in zip([1024.0, 0.5], ridge_weights(xs, torch.from_numpy(y), [1024.0, 0.5]), strict=True):
        xd = xs.numpy()
        solve = np.linalg.solve(xd.T @ xd + l2 * np.eye(d + 1), xd.T @ y)
        sk = Ridge(alpha=l2, fit_intercept=False, solver="cholesky").fit(xd, y).coef_.T
        scale = np.abs(solve).max()
        np.testing.assert_allclose(w.numpy(), solve, atol=1e-8 * scale, rtol=1e-6)
        np.testing.assert_allclose(w.numpy(), sk, atol=1e-8 * scale, rtol=1e-6)


def test_probe_predicts_by_argmax_of_the_ridge_scores():
    gen = np.random.default_rng(1)
    x, y = torch.from_numpy(gen.normal(size=(60, 8))), torch.from_numpy(gen.integers(0, 3, 60))
    x_test, y_test = torch.from_numpy(gen.normal(size=(40, 8))), torch.from_numpy(gen.integers(0, 3, 40))
    xs, xs_test = standardise(x, x_test)
    w = np.linalg.solve(xs.numpy().T @ xs.numpy() + 3.0 * np.eye(9), xs.numpy().T @ (2 * np.eye(3)[y] - 1))
    expected = float(((xs_test.numpy() @ w).argmax(1) == y_test.numpy()).mean())
    assert probe_accuracies(x, y, x_test, y_test, 3, [3.0]) == [pytest.approx(expected)]


# --- the few-shot draw and the probe -----------------------------------------------------------------------------
def test_fewshot_draw_is_big_vision_s():
    labels = np.random.default_rng(0).integers(0, 6, 500)
    for seed in (0, 1, 2):
        rng = np.random.default_rng(seed)  # the rule of big_vision's fewshot_lsr, written out
        per_class = [rng.permutation(np.where(labels == c)[0]) for c in range(6)]
        for k in (1, 5, 10, 25):
            idx = fewshot_indices(labels, 6, k, seed)
            np.testing.assert_array_equal(idx, np.concatenate([p[:k] for p in per_class]))
            assert np.bincount(labels[idx], minlength=6).tolist() == [k] * 6
        assert set(fewshot_indices(labels, 6, 5, seed)) <= set(fewshot_indices(labels, 6, 10, seed))  # nested
    assert not np.array_equal(fewshot_indices(labels, 6, 10, 0), fewshot_indices(labels, 6, 10, 1))


def embedded_pixels(name: str, size: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Raw pixels as features: (features, labels) of the train and the test split of a stand-in transfer set."""
    train, test, _ = transfer.load_transfer_set(name, None, size=size, in_chans=1)
    return [(torch.cat([x.flatten(1) for x, _ in loader]), torch.cat([y for _, y in loader]))
            for loader in (train, test)]


@pytest.mark.parametrize("name,size", [("digits", 8), ("animal_mnist", 28)])
def test_probe_on_raw_pixels_beats_chance_and_is_deterministic(name, size):
    feats = embedded_pixels(name, size)
    # digits: 100 examples x 65 features (primal); animal_mnist: 100 x 785 (dual)
    metrics = fewshot_metrics(*feats, num_classes=10, shots=[10], seeds=[0, 1, 2])
    assert metrics["10shot"] > {"digits": 0.8, "animal_mnist": 0.35}[name]  # chance: 0.1
    assert metrics == fewshot_metrics(*feats, num_classes=10, shots=[10], seeds=[0, 1, 2])
    assert len({metrics[f"10shot/seed{s}"] for s in range(3)}) > 1  # the seeds draw different sets
    assert metrics["10shot"] == pytest.approx(np.mean([metrics[f"10shot/seed{s}"] for s in range(3)]))


def test_l2_grid_chooses_by_cross_validation_inside_the_fewshot_set():
    train, test = embedded_pixels("digits", 8)
    idx = torch.from_numpy(fewshot_indices(train[1].numpy(), 10, 10, 0))
    grid = [1e-3, 1.0, 1024.0, 1e7]
    chosen = choose_l2(train[0][idx], train[1][idx], 10, grid)
    assert chosen in grid and chosen != 1e7  # l2 = 1e7 leaves only the bias: chance accuracy
    one_shot = torch.from_numpy(fewshot_indices(train[1].numpy(), 10, 1, 0))
    assert choose_l2(train[0][one_shot], train[1][one_shot], 10, grid) is None  # nothing to hold out
    metrics = fewshot_metrics(train, test, 10, shots=[1, 10], seeds=[0], l2_grid=grid)
    assert metrics["1shot/seed0/l2"] == 1024.0 and metrics["10shot/seed0/l2"] == chosen
    fixed = fewshot_metrics(train, test, 10, shots=[10], seeds=[0], l2=chosen)
    assert metrics["10shot"] == fixed["10shot"]


def test_evaluator_on_vit_features_skips_missing_sets_with_a_warning():
    torch.manual_seed(0)
    model = create_model("mini/2", attention=dict(activation="relu"), num_classes=10, img_size=8, in_chans=1)
    evaluator = FewshotEvaluator(["digits", "birds"], {"birds": None}, img_size=8, in_chans=1, shots=[1, 10],
                                 seeds=[0, 1])
    with pytest.warns(MissingTransferSet, match="birds"):
        metrics = evaluator(model, torch.device("cpu"))
    assert metrics["fewshot/num_datasets"] == 1.0
    assert metrics["fewshot/10shot_mean"] == metrics["fewshot/digits/10shot"] > 0.5  # random-init features
    assert not any(k.startswith("fewshot/birds") for k in metrics)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # warned once per evaluator, not at every probe
        assert evaluator(model, torch.device("cpu")) == metrics
    assert model.training  # the previous mode is restored


def test_pre_logits_are_pooled_tokens_for_gap_and_the_tanh_layer_for_tok():
    torch.manual_seed(0)
    images = torch.randn(3, 1, 8, 8)
    gap = create_model("mini/2", num_classes=10, img_size=8, in_chans=1, pool="gap")
    tok = create_model("mini/2", num_classes=10, img_size=8, in_chans=1, pool="tok", rep_size=True)
    loader = [(images, torch.zeros(3, dtype=torch.long))]
    with torch.no_grad():
        gap.eval()
        tok.eval()
        torch.testing.assert_close(extract_features(gap, loader, torch.device("cpu"))[0],
                                   gap.forward_features(images).mean(1))
        cls = tok.forward_features(images)[:, 0]
        torch.testing.assert_close(extract_features(tok, loader, torch.device("cpu"))[0],
                                   torch.tanh(tok.fc_norm[0](cls)))


# --- transfer sets on disk -----------------------------------------------------------------------------------------
def png_tree(root: Path, classes: list[str], per_class: int, seed: int = 0) -> None:
    gen = np.random.default_rng(seed)
    for c in classes:
        (root / c).mkdir(parents=True)
        for i in range(per_class):
            w, h = gen.integers(10, 40, 2)
            Image.fromarray(gen.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(root / c / f"{i}.png")


def test_a_pool_dataset_splits_alike_as_a_folder_tree_and_as_shards(tmp_path, monkeypatch):
    monkeypatch.setitem(transfer.TRANSFER_SETS, "col_hist", transfer.TransferSet("tiny pool", 3, test_count=7))
    png_tree(tmp_path / "tree", ["a", "b", "c"], per_class=6)
    write_shards(str(tmp_path / "tree"), tmp_path / "shards", val_count=7, progress=False)

    def split_images(path):
        train, test, num_classes = transfer.load_transfer_set("col_hist", str(path), size=7, in_chans=3,
                                                              batch_size=4)
        assert num_classes == 3
        return [sorted((tuple(x.flatten().tolist()), int(y)) for xs, ys in ld for x, y in zip(xs, ys, strict=True))
                for ld in (train, test)]

    folder, shards = split_images(tmp_path / "tree"), split_images(tmp_path / "shards")
    assert (len(folder[0]), len(folder[1])) == (11, 7)
    assert folder == shards
    assert all(-1 <= v <= 1 for image, _ in folder[0] for v in image) and len(folder[0][0][0]) == 3 * 7 * 7

    write_shards(str(tmp_path / "tree"), tmp_path / "no_val", progress=False)
    with pytest.raises(ValueError, match="--val-count 7"):
        transfer.load_transfer_set("col_hist", str(tmp_path / "no_val"), 7, 3)
    with pytest.raises(FileNotFoundError):
        transfer.load_transfer_set("col_hist", str(tmp_path / "nothing"), 7, 3)
    with pytest.raises(ValueError, match="has 3 classes"):
        transfer.load_transfer_set("dtd", str(tmp_path / "shards"), 7, 3)


# --- ImageNet-1k accuracy of a 21k label set -------------------------------------------------------------------------
TEDDY = "n04399382"


def constructed_21k() -> list[str]:
    """A label set with every i1k class but the teddy bear, shuffled among non-i1k WordNet ids."""
    wnids = [w for w in wordnet_ids("imagenet1k") if w != TEDDY] + [f"n9{i:07d}" for i in range(500)]
    random.Random(0).shuffle(wnids)
    return wnids


def test_i1k_restriction_on_a_constructed_label_set():
    wnids, i1k = constructed_21k(), wordnet_ids("imagenet1k")
    column = {w: j for j, w in enumerate(wnids)}
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(64, len(wnids), generator=gen)
    targets = torch.randint(0, 1000, (64,), generator=gen)
    targets[targets == i1k.index(TEDDY)] = 0
    targets[:5] = i1k.index(TEDDY)
    for row, t in enumerate(targets[:40].tolist()):  # right answers, beaten only by non-i1k classes
        if i1k[t] != TEDDY:
            logits[row, column[i1k[t]]] = 10.0
        logits[row, column[f"n9{row:07d}"]] = 20.0
    # reference: the best-scoring i1k class, class by class
    expected = torch.tensor([max((c for c in range(1000) if i1k[c] in column),
                                 key=lambda c, r=r: logits[r, column[i1k[c]]]) for r in range(64)])
    for policy in ("wrong", "exclude"):
        restriction = I1kRestriction(wnids, policy)
        torch.testing.assert_close(restriction.predict(logits), expected)
        correct, counted = restriction.score(logits, targets)
        assert correct == int((expected == targets).sum()) == 35 + int((expected[40:] == targets[40:]).sum())
        assert counted == (64 if policy == "wrong" else 59)  # the 5 teddy bears: always wrong, or not counted
    with pytest.raises(ValueError, match="wrong, exclude"):
        I1kRestriction(wnids, "ignore")


@pytest.fixture
def i21k_like(tmp_path):
    """Shards of a 3-class WordNet label set (two i1k classes and one that is not) and an ImageNet-1k val tree
    with those two classes and the teddy bear, which the label set lacks."""
    i1k = wordnet_ids("imagenet1k")
    png_tree(tmp_path / "src" / "train", [i1k[3], i1k[7], "n99999999"], per_class=40)
    png_tree(tmp_path / "src" / "val", [i1k[3], i1k[7], "n99999999"], per_class=4, seed=1)
    png_tree(tmp_path / "i1k" / "val", [i1k[3], i1k[7], TEDDY], per_class=5, seed=2)
    write_shards(str(tmp_path / "src"), tmp_path / "shards", progress=False)
    return tmp_path


def test_run_on_a_21k_label_set_logs_i1k_accuracy_and_evaluate_agrees(tiny_cfg, i21k_like):
    cfg = tiny_cfg("data=shards", f"data.path={i21k_like / 'shards'}", "data.num_classes=3", "data.img_size=8",
                   "data.num_workers=0", "recipe.batch_size=40", "recipe.epochs=1", "eval=embedded",
                   "eval.fewshot.datasets=[]", f"eval.i1k.path={i21k_like / 'i1k'}")
    summary = run(cfg)
    assert summary["status"] == "completed" and summary["global_step"] == 3  # one epoch: last.ckpt = final weights
    acc = summary["metrics"]["val/i1k_acc"]
    assert 0 <= acc <= 10 / 15  # the 5 teddy bears count as errors
    # standalone, from the checkpoint, with the teddy bears excluded
    i1k_only = ["eval=embedded", "eval.fewshot.datasets=[]", f"eval.i1k.path={i21k_like / 'i1k'}"]
    again = evaluate_run(cfg.run_dir, eval_config(i1k_only))
    assert again["val/i1k_acc"] == pytest.approx(acc, abs=1e-6)
    excluded = evaluate_run(cfg.run_dir, eval_config([*i1k_only, "eval.i1k.missing=exclude"]))
    assert excluded["val/i1k_acc"] == pytest.approx(acc * 15 / 10, abs=1e-6)
    assert json.loads((Path(cfg.run_dir) / "summary.json").read_text())["metrics"]["val/i1k_acc"] == pytest.approx(
        excluded["val/i1k_acc"])


def test_no_i1k_accuracy_for_runs_without_a_21k_label_set(tiny_cfg, i21k_like):
    summary = run(tiny_cfg("trainer.max_steps=2", "eval=embedded", "eval.fewshot.datasets=[]",
                           f"eval.i1k.path={i21k_like / 'i1k'}"))  # digits: no WordNet ids
    assert "val/i1k_acc" not in summary["metrics"]


# --- a run with the probe: summary, CSV log, roll-up, figure column, reluvit evaluate -----------------------------
def test_run_with_the_probe_writes_summary_and_rollup(tiny_cfg, tmp_path):
    cfg = tiny_cfg("trainer.max_steps=6", "eval=embedded", "eval.fewshot.shots=[1,10]", "eval.fewshot.seeds=[0,1]",
                   "eval.fewshot.every_n_steps=3")
    summary = run(cfg)
    metrics = summary["metrics"]
    for name in ("animal_mnist", "digits"):
        for k in (1, 10):
            seeds = [metrics[f"fewshot/{name}/{k}shot/seed{s}"] for s in (0, 1)]
            assert metrics[f"fewshot/{name}/{k}shot"] == pytest.approx(np.mean(seeds))
    assert metrics["fewshot/num_datasets"] == 2
    assert metrics["fewshot/10shot_mean"] == pytest.approx(
        (metrics["fewshot/animal_mnist/10shot"] + metrics["fewshot/digits/10shot"]) / 2)
    assert metrics["fewshot/digits/10shot"] > 0.3  # 6 steps of training: far from chance (0.1) already
    on_disk = json.loads((Path(cfg.run_dir) / "summary.json").read_text())
    assert on_disk["metrics"]["fewshot/10shot_mean"] == metrics["fewshot/10shot_mean"]
    import pandas as pd

    log = pd.concat(pd.read_csv(p) for p in Path(cfg.run_dir).glob("csv/version_*/metrics.csv"))
    assert log.dropna(subset=["fewshot/10shot_mean"])["step"].tolist() == [3, 6]  # every 3 steps; 6 is the end

    table = rollup(tmp_path / "runs", tmp_path / "results" / "runs")
    assert table.loc[0, "fewshot_10shot_mean"] == pytest.approx(metrics["fewshot/10shot_mean"])
    point = {"recipe": "smoke", "model": "mini2", "activation": "relu"}
    assert aggregate(table, [point], "fewshot_10shot_mean")["mean"].iloc[0] == pytest.approx(
        metrics["fewshot/10shot_mean"])  # Figure 1's right-panel column

    again = evaluate_run(Path(cfg.run_dir) / "checkpoints" / "last.ckpt",
                         eval_config(["eval=embedded", "eval.fewshot.shots=[10]", "eval.fewshot.seeds=[0,1]",
                                      "eval.fewshot.datasets=[digits]"]))
    assert again["fewshot/num_datasets"] == 1
    # the evaluation reaches the roll-up (the row is rewritten) and the figure's column
    table = rollup(tmp_path / "runs", tmp_path / "results" / "runs")
    assert again["fewshot/10shot_mean"] == again["fewshot/digits/10shot"] != metrics["fewshot/10shot_mean"]
    assert table.loc[0, "fewshot_10shot_mean"] == pytest.approx(again["fewshot/10shot_mean"])
    assert aggregate(table, [point], "fewshot_10shot_mean")["mean"].iloc[0] == pytest.approx(
        again["fewshot/10shot_mean"])
    evaluated = json.loads((Path(cfg.run_dir) / "summary.json").read_text())
    assert evaluated["config"] == on_disk["config"] and evaluated["evaluation"]["eval"]["fewshot"]["shots"] == [10]
    assert evaluated["metrics"]["fewshot/digits/10shot"] == again["fewshot/digits/10shot"]
    mtime = (Path(cfg.run_dir) / "summary.json").stat().st_mtime_ns
    assert run(tiny_cfg("trainer.max_steps=6", "eval=none")) == evaluated  # other eval settings: still skipped
    assert (Path(cfg.run_dir) / "summary.json").stat().st_mtime_ns == mtime


@pytest.mark.parametrize("override,key", [
    ("eval.fewshot.datasets=[imagenet]", "eval.fewshot.datasets"),
    ("eval.fewshot.shots=[0]", "eval.fewshot.shots"),
    ("eval.fewshot.l2=0", "eval.fewshot.l2"),
    ("eval.fewshot.l2_grid=[1,-1]", "eval.fewshot.l2_grid"),
    ("eval.i1k.missing=skip", "eval.i1k.missing"),
    ("eval.i1k.path=/no/such/dir", "eval.i1k.path"),
])
def test_invalid_eval_config_names_the_key(tiny_cfg, override, key):
    from reluvit.run.schema import ConfigError
    from reluvit.run.validate import validate

    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        validate(tiny_cfg(override))


def test_embedded_stand_ins_have_no_path_and_their_data_config_split():
    train, test, num_classes = transfer.load_transfer_set("digits", None, size=8, in_chans=1)
    assert (len(train.dataset), len(test.dataset), num_classes) == (1500, 297, 10)
    assert len(EMBEDDED["digits"]().labels) == 1797
