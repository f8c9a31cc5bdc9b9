"""Is this machine logged in to a W&B server, and which one: ``logger.wandb_mode=auto`` logs online then, offline
otherwise. The server is ``WANDB_BASE_URL``, else the ``base_url`` that ``wandb login --host`` saved, else the public
one; logged in means ``WANDB_API_KEY`` is set or the netrc file (``NETRC``, else ``~/.netrc``) has an entry for that
server's host, which is where ``wandb login`` writes the key."""

from __future__ import annotations

import configparser
import netrc
import os
from pathlib import Path
from urllib.parse import urlparse

PUBLIC_SERVER = "https://api.wandb.ai"


def base_url() -> str:
    if url := os.environ.get("WANDB_BASE_URL"):
        return url
    config_dir = Path(os.environ.get("WANDB_CONFIG_DIR", Path.home() / ".config" / "wandb"))
    settings = configparser.ConfigParser()
    settings.read(config_dir / "settings")  # a missing file reads as empty
    return settings.get("default", "base_url", fallback=PUBLIC_SERVER)


def logged_in() -> bool:
    if os.environ.get("WANDB_API_KEY"):
        return True
    path = Path(os.environ.get("NETRC", Path.home() / ".netrc"))
    try:
        return netrc.netrc(path).authenticators(urlparse(base_url()).hostname or "") is not None
    except (OSError, netrc.NetrcParseError):
        return False


def resolve_mode(mode: str) -> str:
    """``auto`` -> ``online`` when :func:`logged_in`, else ``offline``; the other modes as they are."""
    if mode != "auto":
        return mode
    return "online" if logged_in() else "offline"
