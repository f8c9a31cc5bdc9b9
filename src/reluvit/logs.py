"""How reluvit's commands talk: log lines without decoration, warnings as one line with their category, and the
messages of the libraries that say nothing to a reluvit user dropped where they come from, each with its reason."""

from __future__ import annotations

import logging
import warnings

# (logger, text of the message): Lightning's info lines that do not apply to a reluvit run
DROPPED_LOGS = (
    ("pytorch_lightning.utilities.rank_zero", "try installing [litlogger]"),  # an advertisement, in every run
    ("pytorch_lightning.utilities.rank_zero", "to estimate number of stepping batches"),  # an internal step
)
# Warnings (message regex): Lightning's about its own internals or about a setting reluvit chose
DROPPED_WARNINGS = (
    # a local run on a machine with SLURM's commands (a login node, the test cluster): meant, not a forgotten srun
    r"The `srun` command is available on your system but is not used",
    # Lightning 2.6 calling a torch API that torch deprecated: nothing a user can change
    r"`isinstance\(treespec, LeafSpec\)` is deprecated",
)
LEVELS = {-1: logging.WARNING, 0: logging.INFO, 1: logging.DEBUG}  # -q, neither, -v


class _Without(logging.Filter):
    def __init__(self, text: str) -> None:
        super().__init__()
        self.text = text

    def filter(self, record: logging.LogRecord) -> bool:
        return self.text not in record.getMessage()


def one_line(message, category, filename, lineno, line=None) -> str:
    """A warning as ``Category: message`` (Python's own format adds the file, line and source of the caller)."""
    return f"{category.__name__}: {message}"


def configure(verbosity: int = 0) -> None:
    """Logging for a command: ``verbosity`` -1 (warnings only), 0 (progress) or 1 (debug)."""
    level = LEVELS[max(-1, min(1, verbosity))]
    logging.basicConfig(level=min(level, logging.INFO), format="%(message)s")  # a no-op where handlers exist
    if verbosity:  # the console's level; a run's train.log keeps its INFO records whatever the console shows
        root = logging.getLogger()
        root.setLevel(min(level, logging.INFO))
        for handler in root.handlers:
            if type(handler) is logging.StreamHandler:
                handler.setLevel(level)
    logging.captureWarnings(True)  # warnings reach train.log too
    warnings.formatwarning = one_line
    for pattern in DROPPED_WARNINGS:
        warnings.filterwarnings("ignore", message=pattern)
    for name, text in DROPPED_LOGS:
        logger = logging.getLogger(name)
        if not any(isinstance(f, _Without) and f.text == text for f in logger.filters):
            logger.addFilter(_Without(text))
