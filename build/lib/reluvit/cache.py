"""reluvit's disk cache of what it can recompute (compositions, validation outcomes, model shapes, the cost
estimate's model readings): one pickle per entry under :func:`cache_dir`, written atomically, the least recently
used removed beyond a size, and the digests that key an entry by the code, packages and machine it was computed
with. A missing, corrupt or foreign entry is a miss: the caller computes the value again."""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import logging
import os
import pickle
import socket
import sys
import tempfile
import zlib
from collections.abc import Iterable
from pathlib import Path

log = logging.getLogger(__name__)
CACHE_BYTES = 256 * 2**20  # per cache folder: the least recently used entries beyond this are removed
SITE_DIRS = ("site-packages", "dist-packages")  # installing, upgrading or removing a package changes their listing


def cache_dir() -> Path:
    """Where reluvit caches what it can recompute: ``$RELUVIT_CACHE_DIR``, else ``$XDG_CACHE_HOME/reluvit``, else
    ``~/.cache/reluvit``. Its entries are pickles, read back as they are: a folder of the user's own."""
    if os.environ.get("RELUVIT_CACHE_DIR"):
        return Path(os.environ["RELUVIT_CACHE_DIR"])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "reluvit"


def files_digest(paths: Iterable[Path]) -> str:
    """Digest of the files' paths and contents (source files: the code a cached result was computed by)."""
    digest = hashlib.sha256()
    for path in paths:
        data = Path(path).read_bytes()
        digest.update(f"{path}:{len(data)}\n".encode())
        digest.update(data)
    return digest.hexdigest()


def environment_digest() -> str:
    """Digest of what checks and model readings depend on besides their arguments: reluvit's code (constructors
    refuse what they cannot build), the installed packages (Lightning's registries, timm) and the machine (its host
    name and visible GPUs: whether CUDA and DALI are there decides loaders and attention paths)."""
    machine = [socket.gethostname(), os.environ.get("CUDA_VISIBLE_DEVICES")]
    return hashlib.sha256(json.dumps([_installation_digest(), machine]).encode()).hexdigest()


@functools.cache  # a process runs the code it started with
def _installation_digest() -> str:
    package = Path(__file__).resolve().parent
    code = files_digest(sorted(p for p in package.rglob("*") if p.is_file() and "__pycache__" not in p.parts))
    installed = [(p, os.stat(p).st_mtime_ns) for p in sys.path if os.path.basename(p) in SITE_DIRS and os.path.isdir(p)]
    return hashlib.sha256(json.dumps([code, installed, sys.version]).encode()).hexdigest()


def read_cached(folder: str, key: str) -> object | None:
    """The value :func:`write_cached` stored under ``key``; None when there is none, or it cannot be read (a
    corrupt or foreign file is ignored: the caller computes the value again and overwrites it)."""
    path = cache_dir() / folder / key
    try:
        value = pickle.loads(zlib.decompress(path.read_bytes()))
    except FileNotFoundError:
        return None
    except Exception as e:  # noqa: BLE001 - any unreadable entry is a miss
        log.debug("ignoring the cache entry %s: %s", path, e)
        return None
    with contextlib.suppress(OSError):
        os.utime(path)  # recently used: kept by _prune
    return value


def write_cached(folder: str, key: str, value: object) -> None:
    """Store ``value`` under ``key``, atomically (another process writing the same entry writes the same value; a
    reader sees the old file or the new one, whole); a cache that cannot be written is skipped."""
    directory = cache_dir() / folder
    tmp = None
    try:
        directory.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=directory, prefix=f".{key}.", suffix=".tmp", delete=False) as f:
            tmp = f.name
            f.write(zlib.compress(pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL), 1))
        os.replace(tmp, directory / key)
        tmp = None
        _prune(directory)
    except OSError as e:
        log.debug("not caching in %s: %s", directory, e)
    finally:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)


def _prune(directory: Path, keep_bytes: int = CACHE_BYTES) -> None:
    """Remove the least recently used entries beyond ``keep_bytes`` (a sweep's composition takes a few MB)."""
    entries = []
    for path in directory.iterdir():
        try:
            stat = path.stat()
        except OSError:  # removed by another process meanwhile
            continue
        entries.append((stat.st_mtime, stat.st_size, path))
    total = 0
    for _, size, path in sorted(entries, reverse=True):
        total += size
        if total > keep_bytes:
            path.unlink(missing_ok=True)
