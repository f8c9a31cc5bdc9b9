"""A run's console: reluvit's own lines, warnings as one line with their category, none of the library messages
that say nothing to a reluvit user (reluvit.logs), and -q / -v."""

from __future__ import annotations

import subprocess
import sys

from conftest import TINY

NOISE = ("litlogger", "LeafSpec", "weights_only", "srun", "to estimate number of stepping batches", ".py:")


def console(tmp_path, *flags: str) -> str:
    result = subprocess.run([sys.executable, "-m", "reluvit", *flags, "train", *TINY, "trainer.max_steps=2",
                             f"runs_dir={tmp_path}", "trainer.enable_progress_bar=false"],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    return result.stdout + result.stderr


def test_a_run_prints_its_own_lines_and_no_library_noise(tmp_path):
    out = console(tmp_path)
    assert "memory plan:" in out and ": completed at step 2" in out
    assert not [word for word in NOISE if word in out], out
    warnings = [line for line in out.splitlines() if "Warning: " in line or "TransferSet: " in line]
    assert all(line.split(":")[0].isidentifier() for line in warnings)  # Category: message, one line each


def test_quiet_and_verbose(tmp_path):
    quiet = console(tmp_path / "q", "-q")
    assert "memory plan:" not in quiet and "completed at step" not in quiet
    assert "memory plan:" in console(tmp_path / "v", "-v")
