"""Is the Hugging Face hub usable right now? One probe for image and caption weights alike.

Offline, ``from_pretrained`` and timm's hub loader may retry for minutes before failing; this
answers within ``timeout`` seconds (the probe runs in a daemon thread because DNS lookups ignore
timeouts), so a run can stop at once with the offline choices instead.

The cache is looked up where the environment says *now* (:func:`cache_dir`): huggingface_hub reads
``HF_HOME``/``HF_HUB_CACHE`` once, at import, so a notebook (or a test) that sets them afterwards
would otherwise probe one folder and be told about another.
"""
from __future__ import annotations

import os
import threading
from pathlib import Path

OFFLINE_FLAGS = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")


def offline_flag() -> str | None:
    """The environment variable that switches the hub off, if one is set."""
    for var in OFFLINE_FLAGS:
        if os.environ.get(var, "").strip().lower() in ("1", "true", "yes", "on"):
            return var
    return None


def cache_dir() -> Path:
    """The hub cache folder the environment names at this call (huggingface_hub's precedence)."""
    env = os.environ.get
    home = env("HF_HOME") or os.path.join(env("XDG_CACHE_HOME") or os.path.join("~", ".cache"), "huggingface")
    hub = env("HF_HUB_CACHE") or env("HUGGINGFACE_HUB_CACHE") or os.path.join(home, "hub")
    return Path(os.path.expanduser(os.path.expandvars(hub)))


def cached_file(repo_id: str, filename: str) -> str | None:
    """``filename`` of hub repo ``repo_id`` in :func:`cache_dir`, if it is there (never downloads)."""
    try:
        from huggingface_hub import try_to_load_from_cache
        found = try_to_load_from_cache(repo_id, filename, cache_dir=cache_dir())
    except Exception:  # noqa: BLE001 - a malformed name, or no huggingface_hub: simply "not cached"
        return None
    return found if isinstance(found, str) else None


def hub_unreachable_reason(timeout: float = 3.0) -> str | None:
    """Why the hub cannot be used now (None when it can); never blocks longer than ``timeout``.

    The probe is a HEAD request through huggingface_hub's own client, so it goes the way downloads
    go: through ``HTTPS_PROXY``/``HTTP_PROXY`` (a raw socket would refuse a proxied network whose
    downloads work). Any HTTP answer means reachable."""
    flag = offline_flag()
    if flag:
        return f"{flag} is set"
    try:
        from huggingface_hub import constants
        from huggingface_hub.utils import get_session
    except ImportError:
        return "huggingface_hub is not installed"
    endpoint = constants.ENDPOINT
    result: list[str | None] = []

    def probe():
        try:
            get_session().head(endpoint, timeout=timeout)
            result.append(None)
        except Exception as err:  # noqa: BLE001 - connection, proxy, TLS, offline mode: all "unreachable"
            result.append(f"cannot reach {endpoint} ({type(err).__name__}: {err})")

    thread = threading.Thread(target=probe, daemon=True)
    thread.start()
    thread.join(timeout + 0.5)
    return result[0] if result else f"no answer from {endpoint} within {timeout:.0f} s"
