"""Fail fast without the Hub: a download that cannot happen ends within seconds with a recipe, instead of a
minute of huggingface_hub's retries (the library's loaders and the command line share this check).

Imports neither torch nor transformers.
"""

from __future__ import annotations

import functools
import os
import socket
import sys
from pathlib import Path
from urllib.parse import urlparse

HUB_PROBE_TIMEOUT_S = 3.0
OFFLINE_HINT = "python -m zsad.testing --out DIR writes a tiny random one for a smoke test"


class HubUnreachableError(OSError):
    """A Hub download that cannot happen: no connection and no cached copy (the message has the recipe)."""


def hub_offline() -> bool:
    """`HF_HUB_OFFLINE` set (in the environment, or already in huggingface_hub's constants)."""
    if os.environ.get("HF_HUB_OFFLINE", "").strip().upper() in {"1", "ON", "YES", "TRUE"}:
        return True
    constants = sys.modules.get("huggingface_hub.constants")
    return bool(constants is not None and getattr(constants, "HF_HUB_OFFLINE", False))


@functools.lru_cache(maxsize=None)
def hub_unreachable(timeout: float = HUB_PROBE_TIMEOUT_S) -> str | None:
    """Why the Hub endpoint cannot be reached by a plain TCP connection, or None (reachable or proxied).
    Probed once per process."""
    if any(os.environ.get(name) for name in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")):
        return None  # the proxy decides; let huggingface_hub try
    endpoint = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co"))
    port = endpoint.port or (443 if endpoint.scheme == "https" else 80)
    try:
        socket.create_connection((endpoint.hostname or "", port), timeout=timeout).close()
    except OSError as error:
        return error.strerror or str(error) or type(error).__name__
    return None


def go_offline() -> None:
    """Switch this process to offline mode (cached files only, no network call)."""
    os.environ["HF_HUB_OFFLINE"] = "1"
    constants = sys.modules.get("huggingface_hub.constants")
    if constants is not None:
        constants.HF_HUB_OFFLINE = True


def ensure_downloadable(repo_id: str, *, what: str, alternative: str = f"pass a local folder instead ({OFFLINE_HINT})",
                        filename: str = "config.json") -> None:
    """Return at once when `repo_id` is a local path, offline mode is on, or the Hub answers; with a cached
    copy and no connection, switch to offline mode; otherwise raise `HubUnreachableError` within seconds,
    naming what could not be downloaded and `alternative`."""
    if hub_offline() or Path(repo_id).expanduser().exists():
        return
    reason = hub_unreachable()
    if reason is None:
        return
    from huggingface_hub import try_to_load_from_cache

    if isinstance(try_to_load_from_cache(repo_id, filename), str):
        go_offline()
        return
    endpoint = os.environ.get("HF_ENDPOINT", "https://huggingface.co")
    raise HubUnreachableError(f"cannot download the {what} {repo_id!r}: no connection to {endpoint} ({reason}); "
                              f"offline, {alternative}")
