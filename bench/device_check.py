"""Everything that needs a GPU, in one run of about 8 minutes on an H200 (issue #14): on a bare machine with torch,
timm, Lightning and Triton, plus the wheels of ``make device-wheels`` (docs/kernels.md, "GPU check").

    python bench/device_check.py [--out results/bench] [--reduced]

Parts, in this order, each a child process with a time budget (one that overruns is stopped and recorded as
such, one that fails is recorded, and the check goes on):

1. ``kernel``: the CUDA cases of ``tests/test_kernel.py`` (pytest ``-k cuda``; in parallel with pytest-xdist if
   installed), junit XML kept.
2. ``attention``: ``bench/attention.py``, fused relu vs SDPA softmax at the grid's shapes, and its goals.
3. ``train_step``: ``bench/train_step.py``, S/32, S/16, S/8 softmax vs relu fused vs relu unfused (S/16 also
   compiled), and the harness vs the bare loop vs timm's step, compiled.
4. ``data``: ``bench/data.py --dali``, the DALI loader's images/s per GPU on i21k-like JPEGs with the S/16 i21k
   recipe's augmentation, against 15 000 and against part 3's S/16 training images/s (skipped without DALI, which
   does not fit the GPU machine's 64 MiB carry: run it on your own cluster).
5. ``train``: S/16 on synthetic data through ``python -m reluvit train`` with ``trainer.micro_batch_size=auto``,
   about 75 s of steps (the step count from part 3's images/s); its ``summary.json`` kept.
6. ``micro_batch``: the planner's micro-batch (``reluvit.run.build.micro_batch_size``) vs the largest that
   completes a training step without running out of CUDA memory (doubling, then bisection), for the run's relu
   (fused) and relu unfused. The search runs eager (a compiled step would recompile at every size).

Writes into ``<out>/<device slug>/`` (at most 8 files): ``summary.md`` (parts, goals, the training run),
``goals.csv``, ``device_check.log`` (every part's output), ``kernel_tests.xml``, ``attention.csv``,
``train_step.csv``, ``train_summary.json``, ``micro_batch.csv``; the summary is rewritten after every part. Without
CUDA (or with ``--reduced``) every part runs at CPU scale (tiny shapes, micro models, a few steps) to test the
plumbing, and what needs CUDA is recorded as skipped or not measured.
"""

from __future__ import annotations

import argparse
import gc
import importlib.util
import json
import logging
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import xml.etree.ElementTree as ET
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import torch
from benchlib import RESULTS, device_name, pass_fail, slug

ROOT = Path(__file__).resolve().parents[1]
BENCH = Path(__file__).resolve().parent
log = logging.getLogger("device_check")

# Seconds per part: on a GPU they add up to about 8 minutes; at CPU scale they only stop a hung part.
BUDGETS = {"kernel": 70, "attention": 45, "train_step": 170, "data": 90, "train": 140, "micro_batch": 45}
REDUCED_BUDGET = 600
TRAIN_SECONDS = 75  # the training run's steps (compilation and start-up come on top)
MICRO_BATCH_GOAL = 0.10  # the planner's choice within 10 % below the largest micro-batch that fits
SEARCH_RESOLUTION = 0.02  # bisection stops when the bracket is this fraction of the micro-batch

# The model of parts 4 and 5: the paper's S/16 recipe on synthetic data at full scale; a micro ViT at CPU scale.
RUN = ["model=s16", "data=synthetic", "recipe=i21k_30ep", "data.num_classes=21843"]
REDUCED_RUN = ["model=micro4", "data=synthetic", "data.img_size=28", "data.in_chans=1", "data.num_classes=10",
               "data.num_samples=512", "data.val_size=64", "recipe=smoke", "recipe.batch_size=32",
               "trainer.accelerator=cpu"]
UNFUSED = ["attention.impl=reference"]
OUTPUTS = ("summary.md", "goals.csv", "device_check.log", "kernel_tests.xml", "attention.csv", "train_step.csv",
           "train_summary.json", "micro_batch.csv")  # at most 8: what the GPU machine's tool returns


def bench_args(reduced: bool) -> dict[str, list[str]]:
    """The arguments of the two benchmarks, at GPU or CPU scale."""
    if reduced:
        return {"attention": ["--shapes", "S/32@224,S/16@224", "--tokens", "256", "--warmup", "0", "--repeats", "1"],
                "train_step": ["--models", "micro/4", "--compile-models", "micro/4", "--compile-backend", "eager",
                               "--batch", "16", "--steps", "5", "--harness-steps", "5", "--rounds", "1",
                               "--loops-model", "micro/4", "--loops-mode", "compiled"]}
    return {"attention": ["--repeats", "10"],
            "train_step": ["--models", "S/32,S/16,S/8", "--compile-models", "S/16", "--batch", "128",
                           "--steps", "20", "--harness-steps", "25", "--rounds", "1", "--loops-model", "S/16",
                           "--loops-mode", "compiled"]}


@dataclass
class Part:
    """A part's outcome: ``ok``, ``failed (exit N)``, ``overran (N s)`` or ``skipped (...)``, and its output."""

    name: str
    status: str = "not run"
    seconds: float = 0.0
    budget: float = 0.0
    output: list[str] = field(default_factory=list)


class Check:
    """The run: the output folder, the log, the parts so far and the goal rows they produced."""

    def __init__(self, folder: Path, device: str, reduced: bool) -> None:
        self.folder, self.device, self.reduced = folder, device, reduced
        self.parts: list[Part] = []
        self.goals: list[dict] = []
        self.facts: dict[str, object] = {}
        self.started = time.monotonic()

    def run(self, name: str, command: list[str], collect: Callable[[Part], list[dict]]) -> Part:
        """Run one part's command within its budget, then ``collect`` its goal rows (from its files)."""
        part = Part(name, budget=REDUCED_BUDGET if self.reduced else BUDGETS[name])
        log.info("part %s (budget %.0f s): %s", name, part.budget, " ".join(command))
        start = time.monotonic()
        returncode, overran = run_child(command, part.budget, part.output)
        part.seconds = time.monotonic() - start
        part.status = (f"overran ({part.budget:.0f} s)" if overran else "ok" if returncode == 0
                       else f"failed (exit {returncode})")
        try:
            self.goals += collect(part)
        except Exception as e:  # a part that wrote nothing usable still leaves the others' results
            log.warning("part %s: its results could not be read (%s: %s)", name, type(e).__name__, e)
            self.goals.append(pass_fail(f"{name}: its goals", None, f"{part.status}; {type(e).__name__}: {e}"))
        self.parts.append(part)
        log.info("part %s: %s in %.0f s", name, part.status, part.seconds)
        write_summary(self)
        return part


def run_child(command: list[str], budget: float, output: list[str]) -> tuple[int | None, bool]:
    """Run ``command`` in the repository in its own process group, copying its output to the log as it comes;
    kill the whole group (workers, compilers) once ``budget`` seconds have passed. (exit status, overran)."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    child = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                             text=True, errors="replace", start_new_session=True)
    overran = threading.Event()

    def stop() -> None:
        overran.set()
        try:
            os.killpg(child.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass

    timer = threading.Timer(budget, stop)
    timer.start()
    try:
        for line in child.stdout:
            output.append(line)
            log.info("  %s", line.rstrip())
    finally:
        timer.cancel()
    return child.wait(), overran.is_set()


def kernel_part(check: Check) -> None:
    xdist = ["-n", "8"] if torch.cuda.is_available() and importlib.util.find_spec("xdist") else []
    junit = check.folder / "kernel_tests.xml"
    command = [sys.executable, "-m", "pytest", "tests/test_kernel.py", "-k", "cuda", "-v", "-p", "no:cacheprovider",
               f"--junitxml={junit}", *xdist]

    def collect(part: Part) -> list[dict]:
        counts = junit_counts(junit) if junit.exists() else output_counts(part.output)
        if counts["passed"] == 0 and counts["skipped"] and not counts["failed"]:
            part.status = f"skipped (no CUDA: {counts['skipped']} tests skipped)"
            return [check_row(None, f"no CUDA: {counts['skipped']} skipped")]
        text = ", ".join(f"{n} {k}" for k, n in counts.items() if n)
        return [check_row(counts["passed"] > 0 and not counts["failed"], text or "no test ran")]

    def check_row(ok: bool | None, text: str) -> dict:
        return pass_fail("fused kernel: the CUDA cases of tests/test_kernel.py pass", ok, text)

    check.run("kernel", command, collect)


def junit_counts(path: Path) -> dict[str, int]:
    """passed / failed / skipped from pytest's junit XML (errors count as failed)."""
    root = ET.parse(path).getroot()
    suite = root if root.tag == "testsuite" else root.find("testsuite")
    total, skipped = int(suite.get("tests", 0)), int(suite.get("skipped", 0))
    failed = int(suite.get("failures", 0)) + int(suite.get("errors", 0))
    return {"passed": total - failed - skipped, "failed": failed, "skipped": skipped}


def output_counts(lines: list[str]) -> dict[str, int]:
    """The same from ``pytest -v`` lines, for a run stopped before it wrote its XML."""
    words = [m[1] for line in lines if (m := re.search(r"\b(PASSED|FAILED|ERROR|SKIPPED)\b", line))]
    return {"passed": words.count("PASSED"), "failed": words.count("FAILED") + words.count("ERROR"),
            "skipped": words.count("SKIPPED")}


def attention_part(check: Check) -> None:
    import attention

    command = [sys.executable, str(BENCH / "attention.py"), "--out", str(check.folder),
               *bench_args(check.reduced)["attention"]]
    check.run("attention", command, lambda part: attention.goals(pd.read_csv(check.folder / "attention.csv"),
                                                                 check.device))


def train_step_part(check: Check) -> None:
    import train_step

    command = [sys.executable, str(BENCH / "train_step.py"), "--out", str(check.folder),
               *bench_args(check.reduced)["train_step"]]

    def collect(part: Part) -> list[dict]:
        table = pd.read_csv(check.folder / "train_step.csv")
        return train_step.goals(table[table["bench"] == "attention"], table[table["bench"] == "loops"])

    check.run("train_step", command, collect)


def s16_images_per_second(folder: Path) -> float | None:
    """Part 3's S/16 relu training images/s (compiled where measured), None without them."""
    path = folder / "train_step.csv"
    table = pd.read_csv(path) if path.exists() else pd.DataFrame(columns=["model", "attention", "mode", "img_per_s"])
    rows = table[(table["model"] == "S/16") & (table["attention"] == "relu (auto)")]
    rows = rows.sort_values("mode", key=lambda mode: mode != "compiled")  # the run compiles: compiled rows first
    return None if rows.empty else float(rows["img_per_s"].iloc[0])


def training_steps(folder: Path, global_batch: int) -> int:
    """Optimizer steps for about TRAIN_SECONDS of S/16 training at part 3's relu images/s (20 without them)."""
    speed = s16_images_per_second(folder)
    return 20 if speed is None else int(min(200, max(3, TRAIN_SECONDS * speed / global_batch)))


def data_part(check: Check) -> None:
    """The DALI loader on the GPU (``bench/data.py --dali``: i21k-like JPEGs, the S/16 i21k recipe's augmentation)
    against 15 000 images/s and against part 3's S/16 training images/s; skipped without DALI or a GPU."""
    import data

    from reluvit.data.dali import dali_installed

    speed = s16_images_per_second(check.folder)
    if check.reduced or not dali_installed():
        why = "needs a GPU" if check.reduced else "DALI not installed: pip install -e '.[gpu]'"
        check.parts.append(Part("data", status=f"skipped ({why})"))
        check.goals += data.goals(pd.DataFrame(), speed, check.device)
        write_summary(check)
        return
    out = Path(tempfile.mkdtemp(prefix="device-check-data-"))
    command = [sys.executable, str(BENCH / "data.py"), "--dali-only", "--randaug", "2,0", "--width", "400",
               "--images", "3000", "--out", str(out)]
    try:
        check.run("data", command, lambda part: data.goals(pd.read_csv(out / "data.csv"), speed, check.device))
    finally:
        shutil.rmtree(out, ignore_errors=True)


def train_part(check: Check) -> None:
    runs = Path(tempfile.mkdtemp(prefix="device-check-runs-"))
    run = [*REDUCED_RUN, "data.num_workers=0", "trainer.max_steps=4"] if check.reduced else [
        *RUN, "data.num_workers=12", f"trainer.max_steps={training_steps(check.folder, 4096)}"]
    command = [sys.executable, "-m", "reluvit", "train", *run, "trainer.micro_batch_size=auto", "eval=none",
               f"runs_dir={runs}"]

    def collect(part: Part) -> list[dict]:
        summaries = sorted(runs.glob("**/summary.json"))
        if not summaries:
            return [pass_fail(NEVER_OOM, False, f"no summary.json ({part.status})")]
        shutil.copy(summaries[0], check.folder / "train_summary.json")
        summary = json.loads(summaries[0].read_text())
        check.facts.update(training_facts(summary))
        oom = "out of memory" in str(summary.get("error", "")).lower()
        micro = f"micro-batch {summary.get('micro_batch_size')} x {summary.get('accumulate_grad_batches')} accumulated"
        text = f"{summary['status']}{' (CUDA out of memory)' if oom else ''}, {micro}"
        return [pass_fail(NEVER_OOM, summary["status"] == "completed", text)]

    try:
        check.run("train", command, collect)
    finally:
        shutil.rmtree(runs, ignore_errors=True)


NEVER_OOM = "training through `reluvit train` with the auto micro-batch completes (never out of memory)"
TRAINING_FACTS = ("status", "error", "device", "global_step", "micro_batch_size", "accumulate_grad_batches",
                  "grad_checkpointing", "compile", "memory_estimate_gb", "memory_budget_gb", "attention_impl",
                  "core_hours", "train_seconds", "warmup_seconds", "examples_seen")


def training_facts(summary: dict) -> dict:
    """What the summary says about the run's speed and memory (the keys it has), plus its last images/s."""
    config = summary.get("config", {})
    facts = {"model": config.get("model", {}).get("variant"), "data": config.get("data", {}).get("name"),
             **{key: summary[key] for key in TRAINING_FACTS if key in summary}}
    if speed := summary.get("metrics", {}).get("img_per_sec_per_device"):
        facts["img_per_sec_per_device (last step)"] = speed
    return facts


def micro_batch_part(check: Check) -> None:
    command = [sys.executable, str(Path(__file__).resolve()), "--largest-batch", str(check.folder),
               *(["--reduced"] if check.reduced else [])]

    def collect(part: Part) -> list[dict]:
        table = pd.read_csv(check.folder / "micro_batch.csv")
        return [micro_batch_goal(row) for row in table.to_dict("records")]

    check.run("micro_batch", command, collect)


def micro_batch_goal(row: dict) -> dict:
    """The planner's choice against the largest micro-batch that fits: within MICRO_BATCH_GOAL below it."""
    name = f"auto micro-batch within {MICRO_BATCH_GOAL:.0%} of the largest that fits, never above ({row['attention']})"
    planned, largest = row.get("planned"), row.get("largest_fitting")
    if pd.isna(planned) or pd.isna(largest):
        return pass_fail(name, None, row.get("note") or "no measurement")
    ratio = planned / largest
    text = (f"planned {planned:.0f}, largest fitting {largest:.0f} ({ratio:.0%}; largest fitting divisor of the "
            f"per-device batch {row['largest_divisor']:.0f})")
    return pass_fail(name, 1 - MICRO_BATCH_GOAL <= ratio <= 1, text)


# ----------------------------------------------------------------------------------------------------------------
# Part 5, in its own process: the planner's choice and the largest micro-batch that fits.


def planned(cfg) -> tuple[int, float, bool]:
    """(micro-batch, estimated bytes, grad checkpointing) of the memory planner for a composed config."""
    from reluvit.run.build import micro_batch_size

    plan = micro_batch_size(cfg)
    return plan.micro_batch_size, plan.estimate_bytes, plan.grad_checkpointing


def largest_fitting(fits: Callable[[int], bool], start: int, limit: int) -> int:
    """The largest n <= ``limit`` with ``fits(n)`` (fits is monotone: true up to some n, false above), from
    ``start`` by doubling, then bisection until the bracket is SEARCH_RESOLUTION of the answer; 0 if none fits."""
    low, high = 0, None
    n = min(start, limit)
    while high is None:
        if fits(n):
            low = n
            if n == limit:
                return n
            n = min(2 * n, limit)
        else:
            high = n
    while high - low > max(1, SEARCH_RESOLUTION * low):
        middle = (low + high) // 2
        low, high = (middle, high) if fits(middle) else (low, middle)
    return low


def step_fits(module, optimizer, batch: int, img_size: int, in_chans: int, probes: list[dict]) -> bool:
    """Whether one training step at ``batch`` completes without CUDA running out of memory; its peak is noted."""
    device = next(module.parameters()).device
    torch.cuda.reset_peak_memory_stats(device)
    try:
        _step(module, optimizer, batch, img_size, in_chans)
        fits = True
    except torch.cuda.OutOfMemoryError:  # the step's tensors went with its frame
        fits = False
    optimizer.zero_grad(set_to_none=True)
    gc.collect()
    torch.cuda.empty_cache()
    probes.append({"batch": batch, "fits": fits, "peak_gib": torch.cuda.max_memory_allocated(device) / 2**30})
    log.info("micro-batch %d: %s (peak %.1f GiB)", batch, "fits" if fits else "out of memory", probes[-1]["peak_gib"])
    return fits


def _step(module, optimizer, batch: int, img_size: int, in_chans: int) -> None:
    import train_step

    device = next(module.parameters()).device
    images = torch.randn(batch, in_chans, img_size, img_size, device=device)
    labels = torch.randint(module.num_classes, (batch,), device=device)
    train_step.harness_step(module, images, labels, optimizer)
    torch.cuda.synchronize(device)


def search_largest(overrides: list[str], label: str, cuda: bool) -> dict:
    """The planner's choice and, on CUDA, the largest micro-batch that fits, for one config."""
    import train_step

    from reluvit.run.build import build_module, world_size
    from reluvit.run.compose import compose

    cfg = compose(overrides)
    per_device = cfg.recipe.batch_size // world_size(cfg.trainer)
    micro, estimate, checkpointing = planned(cfg)
    row = {"attention": label, "per_device_batch": per_device, "planned": micro, "grad_checkpointing": checkpointing,
           "estimate_gib": estimate / 2**30, "largest_fitting": None, "largest_divisor": None, "probes": "", "note": ""}
    if not cuda:
        return {**row, "note": "largest fitting: skipped (no CUDA)"}
    module = build_module(cfg).cuda().train()
    if checkpointing:
        module.model.set_grad_checkpointing(True)
    optimizer, _ = train_step.harness_optimizer(module, 1)
    probes: list[dict] = []
    fits = lambda n: step_fits(module, optimizer, n, cfg.data.img_size, cfg.data.in_chans, probes)  # noqa: E731
    largest = largest_fitting(fits, start=micro, limit=per_device)
    divisor = max((d for d in range(1, per_device + 1) if per_device % d == 0 and d <= largest), default=0)
    probes_text = " ".join(f"{p['batch']}:{'ok' if p['fits'] else 'oom'}:{p['peak_gib']:.1f}GiB" for p in probes)
    return {**row, "largest_fitting": largest, "largest_divisor": divisor, "probes": probes_text}


def largest_batch_main(folder: Path, reduced: bool) -> None:
    """Part 5's process: micro_batch.csv, a row per attention, written after each."""
    cuda = torch.cuda.is_available()
    run = REDUCED_RUN if reduced else RUN
    rows = []
    for label, overrides in (("relu (the run's)", run), ("relu unfused", [*run, *UNFUSED])):
        rows.append(search_largest(overrides, label, cuda))
        pd.DataFrame(rows).to_csv(folder / "micro_batch.csv", index=False)
        log.info("%s", rows[-1])


# ----------------------------------------------------------------------------------------------------------------


def versions() -> str:
    from importlib.metadata import PackageNotFoundError, version

    from reluvit.run.rundir import git_revision

    def of(name: str) -> str:
        try:
            return version(name)
        except PackageNotFoundError:
            return "absent"

    packages = ", ".join(f"{n} {of(n)}" for n in ("torch", "triton", "timm", "pytorch-lightning", "hydra-core"))
    return f"Python {sys.version.split()[0]}, {packages}, reluvit {git_revision()}"


def markdown(table: pd.DataFrame) -> str:
    """A pipe table (pandas' to_markdown needs tabulate, which the GPU machine may lack)."""
    lines = ["| " + " | ".join(table.columns) + " |", "|" + "---|" * len(table.columns)]
    lines += ["| " + " | ".join(str(v).replace("|", "/") for v in row) + " |" for row in table.itertuples(index=False)]
    return "\n".join(lines)


def write_summary(check: Check) -> None:
    """``summary.md`` and ``goals.csv`` as they stand (rewritten after every part)."""
    parts = pd.DataFrame([{"part": p.name, "status": p.status, "seconds": round(p.seconds),
                           "budget s": round(p.budget)} for p in check.parts])
    goals = pd.DataFrame(check.goals, columns=["goal", "measured", "verdict", "value", "target"])
    goals.to_csv(check.folder / "goals.csv", index=False)
    sections = [f"# Device check: {check.device}",
                f"{time.strftime('%Y-%m-%d %H:%M')}; {versions()}; {time.monotonic() - check.started:.0f} s"
                f"{' (reduced: CPU scale)' if check.reduced else ''}",
                "## Parts", markdown(parts), "## Goals", markdown(goals[["goal", "measured", "verdict"]])]
    if check.facts:
        facts = pd.DataFrame({"key": list(check.facts), "value": [str(v) for v in check.facts.values()]})
        sections += ["## The training run (train_summary.json)", markdown(facts)]
    (check.folder / "summary.md").write_text("\n\n".join(sections) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=RESULTS, help="results go to <out>/<device slug>/")
    parser.add_argument("--reduced", action="store_true", help="CPU scale even with a GPU (the plumbing only)")
    parser.add_argument("--largest-batch", type=Path, metavar="FOLDER", help=argparse.SUPPRESS)  # part 5's process
    args = parser.parse_args()
    cuda = torch.cuda.is_available()
    reduced = args.reduced or not cuda
    if args.largest_batch:
        logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stdout)
        largest_batch_main(args.largest_batch, reduced)
        return
    device = device_name(torch.device("cuda" if cuda else "cpu"))
    folder = args.out / slug(device)
    folder.mkdir(parents=True, exist_ok=True)
    for name in OUTPUTS:  # a part cut short must not leave an earlier check's file to be read as its own
        (folder / name).unlink(missing_ok=True)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S",
                        handlers=[logging.StreamHandler(sys.stdout),
                                  logging.FileHandler(folder / "device_check.log", mode="w")])
    check = Check(folder, device, reduced)
    log.info("device check on %s into %s%s", device, folder, " (reduced: CPU scale)" if reduced else "")
    for part in (kernel_part, attention_part, train_step_part, data_part, train_part, micro_batch_part):
        part(check)
    log.info("done in %.0f s: %s", time.monotonic() - check.started, folder / "summary.md")
    print((folder / "summary.md").read_text())


if __name__ == "__main__":
    main()
