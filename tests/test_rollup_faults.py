"""The roll-up under faults (`reluvit results`, `status`, `plots`): a summary that parses but lacks what a row needs
is skipped with one log line naming it and what is wrong, never a traceback; status shows such a run as unreadable
with the reason; a truncated table is rebuilt (from its CSV twin when it can) or refused in one line; tables are
written whole or not at all; symbolic links to run directories are followed, once; a copied run is one row."""

from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path

import pandas as pd
import pytest

from reluvit.cli import main
from reluvit.report import rollup as rollup_module
from reluvit.report.rollup import collect, write_table
from test_runstate import fake_run

# The demo sweep's runs (src/reluvit/sweeps/demo.yaml): `reluvit status demo` and `plots demo` find them
DEMO = ["model=mini4", "recipe=smoke", "recipe.epochs=8", "data=animal_mnist", "eval=embedded"]
SOFTMAX, RELU_A1, RELU_A0 = ["attention=softmax"], ["attention=relu", "attention.alpha=1.0"], \
    ["attention=relu", "attention.alpha=0.0"]


def _renamed(summary: dict) -> None:
    summary["config"]["attn"] = summary["config"].pop("attention")  # a config key renamed


DEFECTS = {  # what is wrong -> how a summary gets it
    "no run_name": lambda s: s.pop("run_name"),
    "no status": lambda s: s.pop("status"),
    "config has no 'attention'": _renamed,
    "metrics is a list, not a mapping": lambda s: s.update(metrics=[0.5]),
    "metric 'val/acc' is a string, not a number": lambda s: s.update(metrics={"val/acc": "high"}),
    "core_hours is a string, not a number": lambda s: s.update(core_hours="1 h"),
    "status 'done' is none of": lambda s: s.update(status="done"),
}


def damaged(runs_dir: Path, overrides: list[str], defect: str) -> Path:
    """The summary path of a run of ``overrides`` whose summary has ``defect`` (a key of :data:`DEFECTS`)."""
    path = Path(fake_run(runs_dir, [*DEMO, *overrides])["run_dir"]) / "summary.json"
    summary = json.loads(path.read_text())
    DEFECTS[defect](summary)
    path.write_text(json.dumps(summary))
    return path


def lines_naming(caplog, path: Path | str, level: int = logging.WARNING) -> list[str]:
    """The records of ``level`` or above naming ``path`` (the roll-up's progress lines, which an earlier test's
    logging setup may let through, aside)."""
    return [r.getMessage() for r in caplog.records if r.levelno >= level and str(path) in r.getMessage()]


def results(runs: Path, res: Path, *extra: str) -> pd.DataFrame:
    assert main(["results", "--runs-dir", str(runs), "--results-dir", str(res), *extra]) is None  # no exit: code 0
    return pd.read_parquet(res / "runs.parquet")


def test_results_skip_each_defective_summary_with_one_line_naming_it(tmp_path, caplog):
    runs = tmp_path / "runs"
    good = fake_run(runs, [*DEMO, *SOFTMAX])
    bad = {defect: damaged(runs, [*SOFTMAX, f"seed={i}"], defect) for i, defect in enumerate(DEFECTS, start=1)}
    table = results(runs, tmp_path / "res")
    assert list(table["run_name"]) == [good["run_name"]]
    assert list(pd.read_csv(tmp_path / "res" / "runs.csv")["run_name"]) == [good["run_name"]]
    for defect, path in bad.items():
        lines = lines_naming(caplog, path)
        assert len(lines) == 1 and defect in lines[0], (defect, lines)
    assert "Traceback" not in caplog.text


def test_status_shows_a_defective_summary_as_unreadable_with_the_reason(tmp_path, caplog, capsys):
    runs = tmp_path / "runs"
    fake_run(runs, [*DEMO, *SOFTMAX])
    no_status = damaged(runs, RELU_A1, "no status")
    renamed = damaged(runs, RELU_A0, "config has no 'attention'")
    for attempt in ("first", "with the row cache"):  # the second reads <runs>/.reluvit/rollup.parquet
        caplog.clear()
        assert main(["status", "demo", "--runs-dir", str(runs)]) is None, attempt
        out = capsys.readouterr().out.splitlines()
        counts = dict(zip(out[0].split(), out[1].split(), strict=True))
        assert (counts["runs"], counts["completed"], counts["unreadable"]) == ("3", "1", "2"), (attempt, out)
        assert any(f"{no_status}: no status" in line for line in out), out
        assert any(f"{renamed}: config has no 'attention'" in line for line in out), out
        assert len(lines_naming(caplog, no_status)) == len(lines_naming(caplog, renamed)) == 1, attempt


def test_plots_draw_the_readable_runs_and_name_the_others(tmp_path, caplog):
    runs, res = tmp_path / "runs", tmp_path / "res"
    good = fake_run(runs, [*DEMO, *SOFTMAX])
    bad = damaged(runs, RELU_A1, "metrics is a list, not a mapping")
    assert main(["plots", "demo", "--runs-dir", str(runs), "--results-dir", str(res)]) is None
    assert (res / "smoke" / "demo.png").exists()
    assert list(pd.read_parquet(res / "runs.parquet")["run_name"]) == [good["run_name"]]
    assert len(lines_naming(caplog, bad)) == 1


def test_a_truncated_table_is_rolled_up_again_from_its_twin_or_the_runs(tmp_path, caplog):
    runs, res = tmp_path / "runs", tmp_path / "res"
    kept = fake_run(runs, [*DEMO, *SOFTMAX])
    gone = fake_run(runs, [*DEMO, *RELU_A1])
    results(runs, res)
    shutil.rmtree(gone["run_dir"])  # its row stays in the table
    table = res / "runs.parquet"
    table.write_bytes(table.read_bytes()[:200])  # written in place and cut short
    assert set(results(runs, res)["run_name"]) == {kept["run_name"], gone["run_name"]}  # the CSV twin's rows
    assert len(lines_naming(caplog, table)) == 1 and "twin" in lines_naming(caplog, table)[0]

    caplog.clear()
    table.write_bytes(table.read_bytes()[:200])
    (res / "runs.csv").write_bytes(b"")  # both cut short: rebuilt from the run directories
    assert main(["plots", "demo", "--runs-dir", str(runs), "--results-dir", str(res)]) is None
    assert list(pd.read_parquet(table)["run_name"]) == [kept["run_name"]]
    assert len(lines_naming(caplog, table)) == 1 and (res / "runs.parquet.unreadable").exists()


def test_a_truncated_table_given_to_read_is_refused_in_one_line(tmp_path, capsys):
    runs, res = tmp_path / "runs", tmp_path / "res"
    fake_run(runs, [*DEMO, *SOFTMAX])
    results(runs, res)
    given = tmp_path / "given.parquet"
    given.write_bytes((res / "runs.parquet").read_bytes()[:200])
    with pytest.raises(SystemExit) as exit_:
        main(["plots", "demo", "--runs-dir", str(runs), "--results-dir", str(res), "--completed-in", str(given)])
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and err.count("\n") == 1 and f"{given} is unreadable" in err, err


def test_a_table_is_written_whole_or_not_at_all(tmp_path, monkeypatch):
    stem = tmp_path / "res" / "runs"
    before = pd.DataFrame({"run_name": ["a"], "identity": ["x"], "status": ["completed"], "run_dir": ["r"]})
    write_table(before, stem)

    def cut_short(self, path, **kwargs):
        Path(path).write_bytes(b"PAR1 half a table")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(pd.DataFrame, "to_parquet", cut_short)
    with pytest.raises(OSError):
        write_table(pd.concat([before, before]), stem)
    monkeypatch.undo()
    assert pd.read_parquet(stem.with_suffix(".parquet")).equals(before)
    assert sorted(p.name for p in stem.parent.iterdir()) == ["runs.csv", "runs.parquet"]  # no temporary file left


def test_linked_run_directories_are_followed_once(tmp_path, caplog):
    caplog.set_level(logging.INFO)
    runs = tmp_path / "runs"
    here = fake_run(runs, [*DEMO, *SOFTMAX])
    elsewhere = fake_run(tmp_path / "scratch", [*DEMO, *RELU_A1])  # kept on another disk, linked into runs/
    (runs / "linked").symlink_to(elsewhere["run_dir"], target_is_directory=True)
    (runs / "loop").symlink_to(runs, target_is_directory=True)  # a link to a parent: no walk goes round
    (runs / "alias").symlink_to(here["run_dir"], target_is_directory=True)  # a second name: found once
    (runs / "dangling").mkdir()
    (runs / "dangling" / "summary.json").symlink_to(tmp_path / "nowhere.json")
    table = collect(runs)
    assert sorted(table["run_name"]) == sorted([here["run_name"], elsewhere["run_name"]])
    assert str(runs / "linked") in set(table["run_dir"])
    for name in ("loop", "alias", "dangling"):
        assert len(lines_naming(caplog, runs / name, logging.INFO)) == 1, name
    assert len(results(runs, tmp_path / "res")) == 2


def test_a_copied_run_directory_is_one_row(tmp_path):
    runs = tmp_path / "runs"
    run = fake_run(runs, [*DEMO, *SOFTMAX])
    shutil.copytree(run["run_dir"], runs / "copy-of-softmax")
    assert len(collect(runs)) == 2  # two directories found ...
    table = results(runs, tmp_path / "res")
    assert list(table["run_name"]) == [run["run_name"]]  # ... one run (identity) in the table


@pytest.mark.parametrize("defect", list(DEFECTS))
def test_summary_problem_says_what_is_wrong(tmp_path, defect):
    path = damaged(tmp_path, SOFTMAX, defect)
    assert defect in rollup_module.summary_problem(path.parent)
    assert rollup_module.summary_problem(Path(fake_run(tmp_path, [*DEMO, *RELU_A1])["run_dir"])) is None
    os.chmod(path, 0)  # unreadable by its reader (unless root)
    if not os.access(path, os.R_OK):
        assert "PermissionError" in rollup_module.summary_problem(path.parent)
