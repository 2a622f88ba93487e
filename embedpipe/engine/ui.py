"""`pipe ui`: a local Prefect server (API and UI) on 127.0.0.1, started in the background.

Its pid and URL go to ``$EMBEDPIPE_HOME/ui.json``; while that process lives, every later
`pipe run` and `pipe schedule` reports to it (embedpipe._env sets PREFECT_API_URL, unless the
user set one). It uses Prefect's own database under PREFECT_HOME, so runs recorded earlier in
ephemeral mode show up too. Analytics stay off: nothing leaves loopback.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import psutil

from embedpipe import _env
from embedpipe.errors import ServerStartFailed


def _state_path() -> Path:
    return _env.home() / "ui.json"


def _state() -> dict[str, Any] | None:
    return _env.ui_state()


def healthy(api_url: str, timeout: float = 2.0) -> bool:
    try:
        with urllib.request.urlopen(f"{api_url}/health", timeout=timeout) as resp:
            return resp.status == 200
    except (OSError, ValueError, http.client.HTTPException):  # down, not a URL, not HTTP
        return False


def start(port: int = 4200, host: str = "127.0.0.1", wait: float = 120.0) -> dict[str, Any]:
    """Start the server (or find the one running) and wait until its API answers."""
    _env.apply()  # its environment: analytics off
    running = _state()
    if running and healthy(running["api_url"]):
        return {**running, "already_running": True}
    home = _env.home()
    home.mkdir(parents=True, exist_ok=True)
    log_path = home / "ui.log"
    env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}
    # The UI finds its API through these; `--port` alone leaves them at 127.0.0.1:4200.
    env |= {"PREFECT_SERVER_API_HOST": host, "PREFECT_SERVER_API_PORT": str(port)}
    env["PREFECT_UI_API_URL"] = f"http://{host}:{port}/api"
    prefect = Path(sys.executable).with_name("prefect")
    cmd = [str(prefect), "server", "start", "--host", host, "--port", str(port)]
    with log_path.open("ab") as log:
        proc = subprocess.Popen(
            cmd, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True
        )
    url = f"http://{host}:{port}"
    state = {"pid": proc.pid, "url": url, "api_url": f"{url}/api", "port": port}
    state["log"] = str(log_path)
    deadline = time.monotonic() + wait
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise ServerStartFailed(
                f"the Prefect server exited with code {proc.returncode} before it was ready "
                f"(port {port} in use? try --port); its log: {log_path}: {_tail(log_path)}"
            )
        if healthy(state["api_url"], timeout=1.0):
            _state_path().write_text(json.dumps(state))
            return {**state, "already_running": False}
        time.sleep(0.5)
    _kill(proc.pid)
    raise ServerStartFailed(
        f"the Prefect server did not answer within {wait:.0f} s, so it was stopped; see its "
        f"log {log_path}, then try again"
    )


def stop() -> dict[str, Any] | None:
    """Stop the server `pipe ui` started; None when none was running."""
    state = _state()
    _state_path().unlink(missing_ok=True)
    if state is None:
        return None
    _kill(int(state["pid"]))
    return state


def status() -> dict[str, Any] | None:
    state = _state()
    if state is None:
        return None
    return {**state, "healthy": healthy(state["api_url"])}


def _kill(pid: int, grace: float = 15.0) -> None:
    """SIGTERM the server's process group (uvicorn and its workers), SIGKILL after ``grace``."""
    try:
        proc = psutil.Process(pid)  # before the signal: the process whose end to wait for
        os.killpg(pid, signal.SIGTERM)
    except (psutil.NoSuchProcess, ProcessLookupError):
        return
    try:
        proc.wait(timeout=grace)  # reaps it if it is our child (tests)
    except psutil.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, signal.SIGKILL)


def _tail(path: Path, lines: int = 3) -> str:
    try:
        return " | ".join(path.read_text(errors="replace").strip().splitlines()[-lines:])
    except OSError:
        return "(no log)"
