"""Process defaults that must be set before Prefect or Hugging Face libraries are imported.

Users' own settings always win: every value is a default (``setdefault``). ``apply`` sets
them; importing embedpipe does not. The `pipe` command applies them first thing, the runner
(``engine.flow.execute`` and ``plan``) and ``pipe schedule`` before they import Prefect, and
``models`` before Hugging Face loads a model or tokenizer (``Pipeline.search`` included).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import psutil

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
        pid = int(state["pid"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return state if isinstance(state, dict) and prefect_process(pid) else None


def prefect_process(pid: int) -> psutil.Process | None:
    """The live process ``pid`` when it runs Prefect, else None: a pid reused by another
    process after a reboot is not our server."""
    import psutil  # only when a pid is recorded: importing embedpipe stays light

    try:
        proc = psutil.Process(pid)
        if any("prefect" in arg for arg in proc.cmdline()):
            return proc
    except (psutil.Error, ValueError):  # gone (a zombie too), not ours to read, not a pid
        pass
    return None


def ui_url() -> str | None:
    """The API URL of the server `pipe ui` started, while its process lives."""
    state = ui_state()
    return str(state["api_url"]) if state else None


USER_API_URL = os.environ.get("PREFECT_API_URL")  # the user's own, before apply() sets one
_SET_API_URL: str | None = None  # the PREFECT_API_URL apply() set, if it set one


def apply() -> None:
    """Set the defaults in ``os.environ`` (where unset); cheap, and safe to call again."""
    global USER_API_URL, _SET_API_URL
    for key, value in DEFAULTS.items():
        os.environ.setdefault(key, value)
    # Runs report to the server `pipe ui` started; a PREFECT_API_URL the user set wins.
    current = os.environ.get("PREFECT_API_URL")
    if current is None or current != _SET_API_URL:  # not the one an earlier call set
        USER_API_URL = current
    if current is None and (url := ui_url()):
        os.environ["PREFECT_API_URL"] = _SET_API_URL = url
    if os.environ.get("DO_NOT_TRACK") == "1":
        _decline_openvino_telemetry()


def _decline_openvino_telemetry() -> None:
    """OpenVINO's converter and NNCF send usage telemetry (Google Analytics, from a forked
    process: beside Lance's runtime, a deadlock risk) unless a consent file in the user's home
    says no; they do not read DO_NOT_TRACK. Declining their consent check is their own
    opt-out, made for this process without writing that file. Must run before openvino is
    imported (its converter checks at import), as apply() does."""
    try:
        from openvino_telemetry.utils import opt_in_checker
    except ImportError:
        return
    declined = opt_in_checker.ConsentCheckResult.DECLINED
    opt_in_checker.OptInChecker.check = lambda self, *args, **kwargs: declined  # type: ignore[method-assign]
