"""Issue 4 end to end: a real Prefect server (`pipe ui`), real runs, no mocks.

One server for the module, on a free loopback port, with its own EMBEDPIPE_HOME and PREFECT_HOME
(a fresh SQLite database: the first start runs migrations). Every `pipe` command runs as a
subprocess with that environment, so embedpipe points PREFECT_API_URL at this server from
$EMBEDPIPE_HOME/ui.json. The tests read Prefect through its REST API with httpx, not through
Prefect's client: this process's Prefect settings never come into it.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import BASIC_SPEC, CORPUS, eventually, write_jsonl

ROOT = Path(__file__).resolve().parent.parent
ARTIFACTS = ROOT / "tests" / "artifacts"
STEPS = ["docs", "chunks", "vectors", "index"]
SCHEDULED_SPEC = (
    BASIC_SPEC.replace("name: tiny", "name: nightly").replace("table: tiny", "table: nightly")
    + 'schedule: {cron: "0 2 * * *", timezone: UTC}\n'
)


@dataclass
class Server:
    root: Path
    env: dict[str, str]
    port: int
    url: str
    api: str

    def pipe(
        self, *args: str, check: bool = True, timeout: float = 180
    ) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run(
            [sys.executable, "-m", "embedpipe.cli", *args],
            capture_output=True,
            text=True,
            env=self.env,
            cwd=self.root,
            timeout=timeout,
            check=False,
        )
        if check:
            assert proc.returncode == 0, f"pipe {' '.join(args)}: {proc.stderr[-3000:]}"
        return proc

    def sql(self, spec: Path, query: str) -> list[dict[str, Any]]:
        return json.loads(self.pipe("sql", str(spec), query, "--json").stdout)

    def get(self, path: str) -> Any:
        resp = httpx.get(f"{self.api}{path}", timeout=10)
        resp.raise_for_status()
        return resp.json()

    def post(self, path: str, body: dict[str, Any]) -> Any:
        resp = httpx.post(f"{self.api}{path}", json=body, timeout=10)
        resp.raise_for_status()
        return resp.json()

    def task_runs(self, flow_run_id: str) -> dict[str, dict[str, Any]]:
        runs = self.post("/task_runs/filter", {"flow_runs": {"id": {"any_": [flow_run_id]}}})
        return {t["name"]: t for t in runs}

    def summaries(self, flow_run_id: str) -> list[dict[str, Any]]:
        """The markdown artifacts of a flow run (a failed one also has a result artifact).

        Prefect's client retries a POST that timed out (httpx.ReadTimeout), and a server whose
        SQLite is locked can time out after it stored the artifact: the same artifact, key and
        text, may then be stored twice. Those copies count once; different texts all count."""
        body = {
            "artifacts": {"flow_run_id": {"any_": [flow_run_id]}, "type": {"any_": ["markdown"]}}
        }
        unique: dict[tuple[str, str], dict[str, Any]] = {}
        for artifact in self.post("/artifacts/filter", body):
            unique.setdefault((str(artifact["key"]), str(artifact["data"])), artifact)
        return list(unique.values())


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def answers(api_url: str) -> bool:
    try:
        return httpx.get(f"{api_url}/health", timeout=2).status_code == 200
    except httpx.TransportError:
        return False


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    root = tmp_path_factory.mktemp("prefect-server")
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env["EMBEDPIPE_HOME"] = str(root / "embedpipe-home")
    env["PREFECT_HOME"] = str(root / "prefect-home")
    port = free_port()
    proc = subprocess.run(
        [sys.executable, "-m", "embedpipe.cli", "ui", "--port", str(port), "--json"],
        capture_output=True,
        text=True,
        env=env,
        cwd=root,
        timeout=180,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    state = json.loads(proc.stdout)
    srv = Server(root, env, port, state["url"], state["api_url"])
    try:
        assert state["already_running"] is False and state["port"] == port
        assert state["url"] == f"http://127.0.0.1:{port}" and answers(srv.api)
        yield srv
    finally:
        stopped = srv.pipe("ui", "--stop", "--json", timeout=60)
        assert json.loads(stopped.stdout)["pid"] == state["pid"]
        assert not answers(srv.api), f"{srv.api}/health still answers after pipe ui --stop"
        assert not (root / "embedpipe-home" / "ui.json").exists()


@dataclass
class FirstRun:
    spec: Path
    out: dict[str, Any]
    flow_run: dict[str, Any]


@pytest.fixture(scope="module")
def first_run(server: Server) -> FirstRun:
    """`pipe run SPEC --json` on the tiny corpus, reported to the module's server."""
    work = server.root / "tiny"
    work.mkdir()
    write_jsonl(work / "corpus.jsonl", CORPUS)
    spec = work / "spec.yaml"
    spec.write_text(BASIC_SPEC.lstrip())
    out = json.loads(server.pipe("run", str(spec), "--json").stdout.strip().splitlines()[-1])
    assert out["status"] == "completed"
    [row] = server.sql(spec, "select flow_run_id from runs")
    return FirstRun(spec, out, server.get(f"/flow_runs/{row['flow_run_id']}"))


def test_run_reports_flow_run_tasks_and_summary(server: Server, first_run: FirstRun) -> None:
    """`pipe run`: a flow run named after the run, a task run per step, a summary artifact."""
    spec, out, flow_run = first_run.spec, first_run.out, first_run.flow_run
    run_id = out["run_id"]
    [row] = server.sql(spec, "select status, flow_run_id, prefect, spec_hash from runs")
    assert row["status"] == "completed" and row["prefect"] == "recorded"
    assert row["flow_run_id"] == flow_run["id"]

    # The flow run: named after the run, COMPLETED, tagged.
    assert flow_run["name"] == f"tiny-{run_id}"
    assert flow_run["state"]["type"] == "COMPLETED"
    tags = set(flow_run["tags"])
    assert {"embedpipe", "pipeline:tiny", f"spec:{row['spec_hash'][:8]}"} <= tags
    # ... and findable by name, as the UI's search does it.
    found = server.post("/flow_runs/filter", {"flow_runs": {"name": {"any_": [f"tiny-{run_id}"]}}})
    assert [f["id"] for f in found] == [flow_run["id"]]

    # One task run per step, named after it, COMPLETED, tagged step:NAME.
    # Task-run states are recorded from events, a moment after the flow run's own.
    def completed() -> dict[str, dict[str, Any]]:
        tasks = server.task_runs(flow_run["id"])
        return tasks if all(t["state"]["type"] == "COMPLETED" for t in tasks.values()) else {}

    tasks = eventually(completed) or server.task_runs(flow_run["id"])
    assert sorted(tasks) == sorted(STEPS)
    for name, task in tasks.items():
        assert task["state"]["type"] == "COMPLETED", (name, task["state"])
        assert f"step:{name}" in task["tags"] and "pipeline:tiny" in task["tags"]

    # The run summary: a markdown artifact on the flow run.
    [artifact] = server.summaries(flow_run["id"])
    assert artifact["type"] == "markdown" and artifact["key"] == "tiny-run-summary"
    text = artifact["data"]
    assert f"run `{run_id}`" in text
    assert "| step | type | status | in | out | computed | cached | deleted | skipped | s |" in text
    for name, kind in zip(STEPS, ["ingest", "chunk", "encode", "index"], strict=True):
        assert f"| {name} | {kind} | completed | " in text
    assert out["lance_version"] == 1 and "Lance version committed: **1**" in text
    assert f"pipe runs {spec}" in text
    assert f"pipe sql {spec} \"select * from step_runs where run_id = '{run_id}'\"" in text


def test_noop_rerun_is_recorded_at_once(server: Server, first_run: FirstRun) -> None:
    """With a server configured, a no-op run gets its flow run now (not 'deferred')."""
    spec = first_run.spec
    out = json.loads(server.pipe("run", str(spec), "--json").stdout.strip().splitlines()[-1])
    assert out["status"] == "completed"
    assert all(s["computed"] == 0 for s in out["steps"].values())
    [row] = server.sql(
        spec,
        "select noop, prefect, flow_run_id, lance_version from runs "
        f"where run_id = '{out['run_id']}'",
    )
    # With a server configured, a no-op is recorded in Prefect now, not deferred.
    assert row["noop"] is True and row["prefect"] == "recorded" and row["flow_run_id"]
    assert row["lance_version"] is None  # nothing committed
    assert server.sql(spec, "select count(*) as n from runs where prefect = 'deferred'") == [
        {"n": 0}
    ]
    flow_run = server.get(f"/flow_runs/{row['flow_run_id']}")
    assert flow_run["name"] == f"tiny-{out['run_id']}"
    assert flow_run["state"]["type"] == "COMPLETED"
    assert {"embedpipe", "pipeline:tiny"} <= set(flow_run["tags"])
    [artifact] = server.summaries(flow_run["id"])
    assert "No new Lance version." in artifact["data"]


def test_failed_run_fails_its_flow_run_with_the_step_error(
    server: Server, first_run: FirstRun
) -> None:
    """A failed run: exit 1, catalog 'failed', Prefect FAILED with the same error."""
    spec = first_run.spec
    broken = server.root / "broken-model"
    broken.mkdir()
    (broken / "config.json").write_text("{not json")
    proc = server.pipe(
        "run", str(spec), "--json", "--set", f"steps.vectors.model={broken}", check=False
    )
    assert proc.returncode == 1, proc.stderr
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["status"] == "failed" and "broken-model" in out["error"]
    [row] = server.sql(
        spec,
        f"select status, error, flow_run_id, prefect from runs where run_id = '{out['run_id']}'",
    )
    assert row["status"] == "failed" and row["flow_run_id"], row
    first_line = row["error"].splitlines()[0]  # "step 'chunks' failed: ... broken-model ..."
    assert "failed" in first_line and "broken-model" in first_line

    # Prefect agrees: the same flow run, FAILED, and its message says which step failed and why.
    flow_run = server.get(f"/flow_runs/{row['flow_run_id']}")
    assert flow_run["name"] == f"tiny-{out['run_id']}"
    assert flow_run["state"]["type"] == "FAILED"
    message = flow_run["state"]["message"] or ""
    assert first_line in message, f"Prefect's state message lacks the step error: {message!r}"

    def failed_task() -> dict[str, dict[str, Any]]:
        tasks = server.task_runs(flow_run["id"])
        return tasks if any(t["state"]["type"] == "FAILED" for t in tasks.values()) else {}

    tasks = eventually(failed_task) or server.task_runs(flow_run["id"])
    failed = [name for name, t in tasks.items() if t["state"]["type"] == "FAILED"]
    assert failed == [first_line.split("'")[1]], {n: t["state"]["type"] for n, t in tasks.items()}
    [artifact] = server.summaries(flow_run["id"])
    assert f"| {failed[0]} | " in artifact["data"] and " | failed | " in artifact["data"]
    # runs.prefect is 'recorded' whenever a flow run exists (embedpipe/engine/catalog.py).
    assert row["prefect"] == "recorded", (
        f"the failed run has flow run {row['flow_run_id']} in Prefect, but the catalog says "
        f"prefect={row['prefect']!r}"
    )


def test_schedule_serves_the_deployment_and_runs_now(server: Server) -> None:
    """`pipe schedule --run-now`: a cron deployment, its run completes, Ctrl-C exits 0."""
    work = server.root / "nightly"
    work.mkdir()
    write_jsonl(work / "corpus.jsonl", CORPUS)
    spec = work / "spec.yaml"
    spec.write_text(SCHEDULED_SPEC.lstrip())
    log_path = work / "schedule.log"
    cmd = [sys.executable, "-m", "embedpipe.cli", "schedule", str(spec), "--run-now"]
    cmd += ["--port", str(server.port)]
    with log_path.open("w") as log:
        proc = subprocess.Popen(
            cmd,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=server.env,
            cwd=server.root,
            start_new_session=True,  # its own process group: SIGINT to it is a Ctrl-C
            # A shell without job control starts background jobs with SIGINT ignored; the
            # child would inherit that.
            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
        )
    try:
        # The catalog shows the run-now run completed.
        deadline = time.monotonic() + 120
        row = None
        while time.monotonic() < deadline and row is None:
            assert proc.poll() is None, f"pipe schedule exited early: {log_path.read_text()}"
            probe = server.pipe(
                "sql",
                str(spec),
                "select run_id, status, flow_run_id from runs",
                "--json",
                check=False,
            )
            done = [r for r in json.loads(probe.stdout or "[]") if r["status"] == "completed"]
            row = done[0] if done else None
            if row is None:
                time.sleep(2)
        assert row is not None, f"no completed run within 120 s: {log_path.read_text()[-3000:]}"

        # The deployment, on the spec's cron.
        [deployment] = server.post(
            "/deployments/filter", {"deployments": {"name": {"any_": ["nightly"]}}}
        )
        assert deployment["paused"] is False
        assert {"embedpipe", "pipeline:nightly"} <= set(deployment["tags"])
        crons = [s["schedule"] for s in deployment["schedules"]]
        assert [(c.get("cron"), c.get("timezone")) for c in crons] == [("0 2 * * *", "UTC")]

        # Its run-now flow run COMPLETED (it finishes just after the pipeline's subflow).
        by_deployment = {"flow_runs": {"deployment_id": {"any_": [deployment["id"]]}}}
        scheduled: list[dict[str, Any]] = []
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            scheduled = [
                r
                for r in server.post("/flow_runs/filter", by_deployment)
                if r["name"] == "nightly-scheduled"
            ]
            if scheduled and scheduled[0]["state"]["type"] == "COMPLETED":
                break
            time.sleep(1)
        assert [(r["name"], r["state"]["type"]) for r in scheduled] == [
            ("nightly-scheduled", "COMPLETED")
        ]
        assert "run-now" in scheduled[0]["tags"]

        # The pipeline's own flow run (the catalog's) is a subflow of that one.
        child = server.get(f"/flow_runs/{row['flow_run_id']}")
        assert child["name"] == f"nightly-{row['run_id']}"
        assert child["state"]["type"] == "COMPLETED"
        assert child["parent_task_run_id"], "the pipeline's flow run is not a subflow"
        parent_task = server.get(f"/task_runs/{child['parent_task_run_id']}")
        assert parent_task["flow_run_id"] == scheduled[0]["id"]

        # Ctrl-C: stops serving, exit 0.
        os.killpg(proc.pid, signal.SIGINT)
        try:
            rc = proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            pytest.fail(f"pipe schedule still running 30 s after SIGINT: {log_path.read_text()}")
        output = log_path.read_text()
        assert rc == 0, output
        assert "stopped serving" in output, output
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def test_ui_talks_to_this_server(server: Server) -> None:
    """The browser UI asks /ui-settings for its API URL: it must be this server's, not :4200."""
    settings = httpx.get(f"{server.url}/ui-settings", timeout=10).json()
    assert settings["api_url"].rstrip("/") == server.api, (
        f"pipe ui --port {server.port}: the UI calls {settings['api_url']}, not {server.api}"
    )


def chromium() -> str:
    found = shutil.which("chromium") or (
        "/usr/bin/chromium" if os.access("/usr/bin/chromium", os.X_OK) else None
    )
    if not found:
        pytest.skip("chromium not installed (apt-get install chromium); .ci/run installs it")
    return found


def browse(
    server: Server, url: str, *args: str, size: str = "1400,900"
) -> subprocess.CompletedProcess[str]:
    """Headless Chromium on ``url``; virtual time lets the SPA fetch from the API and render."""
    cmd = [chromium(), "--headless=new", "--no-sandbox", "--disable-gpu"]
    cmd += [f"--user-data-dir={server.root / 'chromium-profile'}", "--virtual-time-budget=15000"]
    cmd += [f"--window-size={size}", *args, url]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=False)


def test_browser_shows_the_runs(server: Server, first_run: FirstRun) -> None:
    """The UI, rendered by a real browser, lists the pipeline's flow run and shows its page.

    Screenshots go to tests/artifacts/; the runs list (the module's five flow runs: first run,
    no-op, failed run, scheduled run and its subflow) is copied to docs/img/ for the README when
    that is missing or EMBEDPIPE_UPDATE_SCREENSHOT=1, so test runs leave the checkout clean."""
    chromium()
    settings = httpx.get(f"{server.url}/ui-settings", timeout=10).json()
    # Prefect 3.8's default UI (v2) lives under /v2; older servers have one UI at /.
    base = (settings.get("v2_base_url") or "").rstrip("/")
    name, flow_run_id = first_run.flow_run["name"], first_run.flow_run["id"]
    pages = {  # page: (url, screenshot size: tall enough for the whole runs list)
        "runs": (f"{server.url}{base}/runs", "1400,1250"),
        "flow-run": (f"{server.url}{base}/runs/flow-run/{flow_run_id}", "1400,900"),
    }
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    for page, (url, size) in pages.items():
        dom = browse(server, url, "--dump-dom")
        assert dom.returncode == 0, dom.stderr[-2000:]
        assert name in dom.stdout, f"{url}: the rendered page does not show {name}"
        shot = ARTIFACTS / f"prefect-ui-{page}.png"
        shot.unlink(missing_ok=True)
        taken = browse(server, url, f"--screenshot={shot}", size=size)
        assert taken.returncode == 0, taken.stderr[-2000:]
        assert shot.exists() and shot.stat().st_size > 10_000, shot
        assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    readme_image = ROOT / "docs" / "img" / "prefect-ui-runs.png"
    if not readme_image.exists() or os.environ.get("EMBEDPIPE_UPDATE_SCREENSHOT") == "1":
        readme_image.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(ARTIFACTS / "prefect-ui-runs.png", readme_image)
