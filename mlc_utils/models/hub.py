"""Is the Hugging Face hub usable right now? One probe for image and caption weights alike.

Offline, ``from_pretrained`` and timm's hub loader may retry for minutes before failing; this
answers within ``timeout`` seconds (the probe runs in a daemon thread because DNS lookups ignore
socket timeouts), so a run can stop at once with the offline choices instead.
"""
from __future__ import annotations

import os
import socket
import threading
from urllib.parse import urlparse

OFFLINE_FLAGS = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")


def offline_flag() -> str | None:
    """The environment variable that switches the hub off, if one is set."""
    for var in OFFLINE_FLAGS:
        if os.environ.get(var, "").strip().lower() in ("1", "true", "yes", "on"):
            return var
    return None


def hub_unreachable_reason(timeout: float = 3.0) -> str | None:
    """Why the hub cannot be used now (None when it can); never blocks longer than ``timeout``."""
    flag = offline_flag()
    if flag:
        return f"{flag} is set"
    try:
        from huggingface_hub import constants
        url = urlparse(constants.ENDPOINT)
        host, port = url.hostname or "huggingface.co", url.port or (443 if url.scheme == "https" else 80)
    except ImportError:
        host, port = "huggingface.co", 443
    result: list[str | None] = []

    def probe():
        try:
            socket.create_connection((host, port), timeout=timeout).close()
            result.append(None)
        except OSError as err:
            result.append(f"cannot reach {host} ({err})")

    thread = threading.Thread(target=probe, daemon=True)
    thread.start()
    thread.join(timeout + 0.5)
    return result[0] if result else f"no answer from {host} within {timeout:.0f} s"
