"""Process defaults that must be set before Prefect or Hugging Face libraries are imported.

Users' own settings always win: every value is a default (``setdefault``).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

DEFAULTS: dict[str, str] = {
    # Prefect: no analytics, no telemetry; nothing leaves loopback.
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "DO_NOT_TRACK": "1",
    # The first ephemeral start on a fresh PREFECT_HOME runs DB migrations (~16 s; default 20 s).
    "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "90",
    # Models resolve from local files; a run never downloads unless the user allows it
    # (HF_HUB_OFFLINE=0).
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_NO_ADVISORY_WARNINGS": "1",
    "TOKENIZERS_PARALLELISM": "false",
}


def home() -> Path:
    """Per-user state: ``$EMBEDPIPE_HOME``, default ``~/.embedpipe``."""
    return Path(os.environ.get("EMBEDPIPE_HOME") or Path.home() / ".embedpipe")


def ui_state() -> dict[str, Any] | None:
    """What `pipe ui` recorded of the server it started, while that process lives."""
    try:
        state = json.loads((home() / "ui.json").read_text())
        os.kill(int(state["pid"]), 0)
        # A pid reused by another process after a reboot is not our server.
        cmdline = Path(f"/proc/{int(state['pid'])}/cmdline")
        if cmdline.exists() and b"prefect" not in cmdline.read_bytes():
            return None
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return state if isinstance(state, dict) else None


def ui_url() -> str | None:
    """The API URL of the server `pipe ui` started, while its process lives."""
    state = ui_state()
    return str(state["api_url"]) if state else None


USER_API_URL = os.environ.get("PREFECT_API_URL")  # the user's own, before apply() sets one


def apply() -> None:
    for key, value in DEFAULTS.items():
        os.environ.setdefault(key, value)
    # Runs report to the server `pipe ui` started; a PREFECT_API_URL the user set wins.
    if "PREFECT_API_URL" not in os.environ and (url := ui_url()):
        os.environ["PREFECT_API_URL"] = url


apply()
