"""The disk caches of compositions (:func:`reluvit.run.compose.compose_points`), of dry-run validation outcomes
(:class:`reluvit.run.validate.Outcomes`), of model shapes (:class:`reluvit.run.memory.ViTShape`) and of the cost
estimate's model readings (:func:`reluvit.sweep.cost.model_costs`): a cached result is the one a cold computation
gives, anything it depends on (a config file, an override, an environment variable an interpolation reads, a file a
check reads) misses, a corrupt entry is recomputed, and the cache lives where RELUVIT_CACHE_DIR says. Also the
progress lines of a long composition or estimate, and configs read back kept out of the garbage collector's way."""

from __future__ import annotations

import functools
import gc
import logging
import pickle
import re
import shutil
import threading
import weakref
import zlib

import pytest
from omegaconf import OmegaConf

from conftest import TINY
from reluvit.cache import cache_dir, read_cached, write_cached
from reluvit.run import compose, memory, validate
from reluvit.run.compose import Progress, compose_containers, compose_points, composition_key
from reluvit.run.schema import TrainConfig
from reluvit.search import packaged
from reluvit.sweep import cost, execute, spec


@pytest.fixture(autouse=True)
def cache(tmp_path, monkeypatch):
    """Every cache of these tests in the test's temporary directory."""
    monkeypatch.setenv("RELUVIT_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path / "cache"


@pytest.fixture
def fresh(monkeypatch):
    """Counts the points composed by Hydra (cache misses)."""
    composed = []
    real = compose.compose_fresh
    monkeypatch.setattr(compose, "compose_fresh", lambda points: composed.extend(points) or real(points))
    return composed


def containers(configs) -> list[dict]:
    return [OmegaConf.to_container(cfg) for cfg in configs]


def test_the_cache_returns_what_a_cold_composition_gives(tmp_path, fresh, cache):
    """A few dozen points of several sweeps (several config groups, alphas, seeds): read back, the same typed,
    resolved configs."""
    points = [point for name, count in (("fig2", 12), ("fig4", 8), ("fig5", 8), ("demo", 6))
              for point in spec.load(name, "smoke").points(gpu=False, extra=[f"runs_dir={tmp_path}"])[:count]]
    cold = compose_points(points)
    assert len(fresh) == len(points) and list((cache / "compose").iterdir())
    warm = compose_points(points)
    assert len(fresh) == len(points)  # nothing composed again
    assert containers(warm) == containers(cold) == compose_containers(points)
    for cfg in warm:
        assert OmegaConf.is_struct(cfg) and OmegaConf.get_type(cfg) is TrainConfig
    with pytest.raises(Exception, match="seed"):  # still typed: the schema refuses a string seed
        warm[0].seed = "x"
    warm[0].logger.figures = ["fig2"]  # each call returns configs of its own
    assert compose_points(points)[0].logger.figures == []


def test_a_changed_config_file_misses(tmp_path, monkeypatch, fresh):
    conf = tmp_path / "conf"
    shutil.copytree(packaged("conf"), conf)
    monkeypatch.setenv("RELUVIT_CONF_DIR", str(conf))  # searched first: its recipe/smoke.yaml hides the packaged one
    lr = compose_points([TINY])[0].recipe.lr
    assert compose_points([TINY])[0].recipe.lr == lr != 0.123 and len(fresh) == 1
    recipe = conf / "recipe" / "smoke.yaml"
    recipe.write_text(re.sub(r"^lr: .*$", "lr: 0.123", recipe.read_text(), flags=re.MULTILINE))
    assert compose_points([TINY])[0].recipe.lr == 0.123
    assert len(fresh) == 2


def test_a_changed_override_misses(fresh):
    assert compose_points([[*TINY, "attention.alpha=0.5"]])[0].attention.alpha == 0.5
    assert compose_points([[*TINY, "attention.alpha=0.75"]])[0].attention.alpha == 0.75
    assert len(fresh) == 2


@pytest.mark.parametrize("overrides", [
    ["data=imagenet1k"],  # ${oc.env:RELUVIT_IMAGENET1K,null} in conf/data/imagenet1k.yaml
    [*TINY, "data.path=${oc.env:RELUVIT_TEST_DATA,null}"],  # in an override
])
def test_an_environment_variable_an_interpolation_reads_misses(overrides, tmp_path, monkeypatch, fresh):
    variable = "RELUVIT_IMAGENET1K" if overrides == ["data=imagenet1k"] else "RELUVIT_TEST_DATA"
    monkeypatch.delenv(variable, raising=False)
    assert compose_points([overrides])[0].data.path is None
    monkeypatch.setenv(variable, str(tmp_path))
    assert compose_points([overrides])[0].data.path == str(tmp_path)
    assert len(fresh) == 2


def test_a_resolver_that_reads_the_time_is_not_cached():
    assert composition_key([[*TINY, "run_name=${now:%H%M%S}"]]) is None
    assert composition_key([TINY]) is not None


@pytest.mark.parametrize("garbage", [b"not a cache entry", zlib.compress(pickle.dumps(["a", "list"])),
                                     zlib.compress(pickle.dumps({"points": [TINY], "configs": b"\x80junk"}))],
                         ids=["not zlib", "another value", "a corrupt part"])
def test_a_corrupt_cache_entry_is_composed_again(garbage, cache, fresh):
    expected = containers(compose_points([TINY]))
    (entry,) = (cache / "compose").iterdir()
    entry.write_bytes(garbage)
    assert containers(compose_points([TINY])) == expected
    assert len(fresh) == 2
    assert containers(compose_points([TINY])) == expected and len(fresh) == 2  # rewritten whole


def test_the_cache_folder(tmp_path, monkeypatch, cache):
    compose_points([TINY])
    assert cache_dir() == cache and len(list((cache / "compose").iterdir())) == 1
    monkeypatch.delenv("RELUVIT_CACHE_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_dir() == tmp_path / "xdg" / "reluvit"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert cache_dir() == tmp_path / "home" / ".cache" / "reluvit"


def test_an_unwritable_cache_is_skipped(tmp_path, monkeypatch, fresh):
    (tmp_path / "file").touch()
    monkeypatch.setenv("RELUVIT_CACHE_DIR", str(tmp_path / "file"))  # no folder can be made under a file
    assert containers(compose_points([TINY])) == containers(compose_points([TINY]))
    assert len(fresh) == 2


def test_writers_of_the_same_entry_never_show_a_reader_half_a_file(cache):
    value = {"points": list(range(10_000))}
    stop, seen = threading.Event(), []

    def read():
        while not stop.is_set():
            seen.append(read_cached("compose", "key"))

    reader = threading.Thread(target=read)
    reader.start()
    writers = [threading.Thread(target=lambda: [write_cached("compose", "key", value) for _ in range(20)])
               for _ in range(4)]
    for writer in writers:
        writer.start()
    for writer in writers:
        writer.join()
    stop.set()
    reader.join()
    assert {repr(v) for v in seen} <= {repr(None), repr(value)}
    assert [p.name for p in (cache / "compose").iterdir()] == ["key"]  # no temporary file left


def test_a_dry_run_that_passed_before_checks_only_its_directories(tmp_path, monkeypatch):
    points = [[*TINY, f"runs_dir={tmp_path / 'runs'}", f"seed={seed}"] for seed in range(2)]
    assert len(execute.prepare(points, dry_run=True)) == 2
    monkeypatch.setattr(validate, "validate", lambda *args, **kwargs: pytest.fail("validated again"))
    assert len(execute.prepare(points, dry_run=True)) == 2
    (tmp_path / "runs").touch()  # the runs directory cannot be made any more
    with pytest.raises(validate.ConfigError, match="runs_dir: cannot create .* is not a directory"):
        execute.prepare(points, dry_run=True)


def test_a_launch_validates_in_full(tmp_path, monkeypatch):
    points = [[*TINY, f"runs_dir={tmp_path / 'runs'}"]]
    execute.prepare(points, dry_run=True)
    checked = []
    real = validate.validate
    monkeypatch.setattr(validate, "validate", lambda cfg, data_path=True: checked.append(data_path) or real(cfg))
    execute.prepare(points)
    assert checked == [True]


def test_a_file_a_check_reads_is_part_of_the_outcome(tmp_path):
    labels = tmp_path / "real.json"
    points = [[*TINY, f"runs_dir={tmp_path / 'runs'}", f"eval.real.labels={labels}"]]
    configs = compose_points(points)
    before = validate._outcome_key(points, configs)
    labels.write_text("[[1]]")
    assert validate._outcome_key(points, configs) != before


def test_model_shapes_are_read_back_from_disk(monkeypatch):
    from reluvit.run.build import architecture as arguments

    architecture = arguments(compose_points([TINY])[0])
    memory._vit_shape.cache_clear()
    shape = memory.ViTShape.of(architecture, "cpu")
    memory._vit_shape.cache_clear()  # as a new process
    monkeypatch.setattr(memory.ViTShape, "_read", lambda *args: pytest.fail("built again"))
    assert memory.ViTShape.of(architecture, "cpu") == shape
    memory._vit_shape.cache_clear()


def test_a_long_composition_logs_its_progress(caplog):
    caplog.set_level(logging.INFO, logger="reluvit.run.compose")
    with Progress("composing", 384, first=0.01, every=0.01) as progress:
        progress.stage("resolved and named", 384)
        progress.advance(7)
        threading.Event().wait(0.1)
    assert "composing 384 runs: 7/384 resolved and named" in caplog.text
    assert "composing 384 runs: done in" in caplog.text
    caplog.clear()
    with Progress("composing", 1, first=0.01, every=0.01):
        threading.Event().wait(0.05)
    assert not caplog.text  # one run's command stays silent


def test_model_costs_are_read_once_with_their_progress(caplog, monkeypatch):
    """Reading the estimate's model costs imports torch and builds models (seconds, cold): it logs its progress like a
    composition, and is read back from disk, silently, for a model seen before."""
    caplog.set_level(logging.INFO, logger="reluvit.run.compose")
    monkeypatch.setattr(cost, "Progress", functools.partial(Progress, first=0.01, every=0.01))
    read, reads = cost.ModelCost.read, []

    def slow_read(cfg):
        reads.append(cfg)
        threading.Event().wait(0.02)
        return read(cfg)

    monkeypatch.setattr(cost.ModelCost, "read", slow_read)
    cfgs = compose_points([[*TINY, f"attention.alpha={alpha / 8}"] for alpha in range(12)])
    costs = cost.model_costs(cfgs)
    assert len(reads) == 12 and "estimating the cost of 12 runs: " in caplog.text and "models read" in caplog.text
    caplog.clear()
    assert cost.model_costs(cfgs) == costs and len(reads) == 12 and not caplog.text


def test_configs_read_back_stay_out_of_later_collections(fresh):
    """A million objects of a sweep's configs, traversed by every collection, took half of a warm dry run: a read
    freezes them (gc.freeze), and the next one collects those dropped since."""
    compose_points([TINY])
    cfg = compose_points([TINY])[0]
    assert len(fresh) == 1 and not any(o is cfg for o in gc.get_objects())  # frozen: left out of collections
    dropped = weakref.ref(cfg)
    del cfg
    compose_points([TINY])
    assert dropped() is None
