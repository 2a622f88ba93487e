"""Prefect: the flow run of a pipeline run, a task run per step, and the records of no-ops.

Prefect is imported here only. A no-op reads Prefect's settings (is a server configured?) and
never starts its server. With
no server configured, Prefect's ephemeral server is started in a background thread while the
steps with work load their models, so the two waits overlap.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import re
import signal
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from embedpipe import _env
from embedpipe.dag import Dag
from embedpipe.engine.catalog import Catalog
from embedpipe.engine.workspace import SERVER_PID
from embedpipe.errors import EmbedpipeError, PrefectUnreachable

if TYPE_CHECKING:
    from embedpipe.engine.runner import Runner
    from embedpipe.results import RunResult

log = logging.getLogger(__name__)


def server_configured() -> bool:
    """Whether runs report to a Prefect server (PREFECT_API_URL, from env or profile)."""
    from prefect.settings import get_current_settings

    return bool(get_current_settings().api.url)


TIMEOUT_ENV = "EMBEDPIPE_PREFECT_TIMEOUT"


def check_server(timeout: float | None = None) -> None:
    """With a Prefect server configured, make sure it answers before a run starts any work:
    a stopped (SIGSTOP), hung or unreachable server would otherwise make the run wait on it
    without a word. Raises PrefectUnreachable, naming the server and what to do."""
    if "PREFECT_API_URL" in os.environ:
        url = os.environ["PREFECT_API_URL"]
    elif not server_configured():
        return
    else:
        from prefect.settings import get_current_settings

        url = str(get_current_settings().api.url)
    if not url:
        return
    if timeout is None:
        try:
            timeout = float(os.environ.get(TIMEOUT_ENV, "10"))
        except ValueError:
            timeout = 10.0
    from embedpipe.engine.ui import healthy

    api = url.rstrip("/")
    deadline = time.monotonic() + timeout
    while True:
        left = deadline - time.monotonic()
        if healthy(api, timeout=max(0.5, min(5.0, left))):
            return
        if time.monotonic() >= deadline:
            break
        time.sleep(min(0.5, max(0.0, deadline - time.monotonic())))
    if _env.ui_url() == api:
        todo = "restart it with pipe ui --stop && pipe ui, then run again"
    else:
        todo = (
            "start or fix that server, or unset PREFECT_API_URL (and the profile's) to run "
            "with Prefect's own ephemeral server"
        )
    raise PrefectUnreachable(
        f"the Prefect server at {api} did not answer {api}/health within {timeout:.0f} s "
        f"(stopped, hung or unreachable), so nothing was run; {todo} (or raise {TIMEOUT_ENV})"
    )


def quiet_run_logs(quiet: bool = True) -> None:
    """Flow- and task-run logs (failure tracebacks included) go to Prefect's API, where the UI
    shows them; on the terminal our progress bars and one-line errors say it instead."""
    logging.getLogger("prefect").setLevel(logging.WARNING if quiet else logging.INFO)
    for name in ("prefect.flow_runs", "prefect.task_runs"):
        logger = logging.getLogger(name)
        logger.setLevel(logging.INFO)  # the UI still gets INFO
        logger.propagate = not quiet


def tags_of(dag: Dag, spec_hash: str | None = None) -> list[str]:
    spec = (spec_hash or dag.spec.hash)[:8]
    return ["embedpipe", f"pipeline:{dag.spec.name}", f"spec:{spec}"]


def run_flow(
    dag: Dag,
    runner: Runner,
    planner: Runner,
    result: RunResult,
    catalog: Catalog,
    *,
    prefect_logs: bool = False,
) -> None:
    """Run the steps as one Prefect flow run; steps the plan already computed are taken from it
    (their task runs then last a moment), the rest run in their task."""
    from prefect import flow, tags, task
    from prefect.cache_policies import NO_CACHE

    quiet_run_logs(not prefect_logs)  # after the import: Prefect configures logging on import

    prestart(runner.ws.root)
    starting = _starting
    for name in dag.order:  # load models while the server starts
        if planner.results[name].estimated and planner.results[name].computed:
            dag.steps[name].setup(runner.context(name))
    if starting is not None:
        starting.join()
    pipeline = dag.spec.name

    def step_task(step: str, run_id: str) -> None:
        if planner.exact(step):
            runner.adopt(step, planner.results[step])
        else:
            runner.run(step)

    @flow(
        name=pipeline,
        flow_run_name=f"{pipeline}-{result.run_id}",
        validate_parameters=False,
        persist_result=False,
        log_prints=False,
    )
    def pipeline_flow(pipeline: str, spec: str, spec_hash: str, run_id: str) -> None:
        from prefect.runtime import flow_run

        result.flow_run_id = str(flow_run.id) if flow_run.id else None
        try:
            for name in dag.order:
                task(
                    step_task,
                    name=f"{name} ({dag.steps[name].type})",
                    task_run_name=name,
                    retries=2,
                    retry_delay_seconds=2,
                    retry_condition_fn=_transient,
                    cache_policy=NO_CACHE,
                    persist_result=False,
                    tags=[f"step:{name}"],
                )(step=name, run_id=run_id)
        finally:  # failed runs get their summary too: it says which step failed, and why
            _summary_artifact(dag, runner, result)

    _record_deferred(pipeline_flow, dag, catalog)
    # Tags entered outside the flow call land on the flow run and its task runs.
    try:
        with tags(*tags_of(dag)):
            pipeline_flow(
                pipeline=pipeline,
                spec=str(dag.spec.path),
                spec_hash=dag.spec.hash,
                run_id=result.run_id,
            )
    finally:
        _flush()


def _flush() -> None:
    """Send the run's queued logs and events now, while the server is surely up: at exit they
    would race the ephemeral server's shutdown (and retry against a closed port)."""
    from prefect.events.worker import EventsWorker
    from prefect.logging.handlers import APILogWorker

    for worker in (APILogWorker, EventsWorker):
        with contextlib.suppress(Exception):
            worker.drain_all(timeout=5, at_exit=False)


def _summary_artifact(dag: Dag, runner: Runner, result: RunResult) -> None:
    """The run's summary as a markdown artifact on its flow run, for the Prefect UI."""
    from prefect.artifacts import create_markdown_artifact

    spec = dag.spec.path
    head = "| step | type | status | in | out | computed | cached | deleted | skipped | s |"
    lines = [head, "|---|---|---|--:|--:|--:|--:|--:|--:|--:|"]
    for name, s in runner.results.items():
        counts = (s.rows_in, s.rows_out, s.computed, s.cached, s.deleted, s.skipped)
        cells = [name, dag.steps[name].type, s.status, *map(str, counts), f"{s.seconds:.1f}"]
        lines.append("| " + " | ".join(cells) + " |")
    version = runner.version
    extra = runner.executor.summary()  # e.g. the Ray cluster and each worker's throughput
    where = f"where run_id = '{result.run_id}'"
    text = "\n".join(
        [
            f"### {dag.spec.name} · run `{result.run_id}`",
            "",
            f"Lance version committed: **{version}**" if version else "No new Lance version.",
            "",
            *lines,
            "",
            *([*extra, ""] if extra else []),
            f"- history: `pipe runs {spec}`",
            f'- step details: `pipe sql {spec} "select * from step_runs {where}"`',
            f'- skipped inputs: `pipe sql {spec} "select step, item, reason from skipped {where}"`',
        ]
    )
    key = re.sub(r"[^a-z0-9-]+", "-", f"{dag.spec.name}-run-summary".lower())
    try:
        create_markdown_artifact(markdown=text, key=key, description=f"{dag.spec.name} run summary")
    except Exception as exc:  # a missing summary must not fail the run
        log.warning("could not attach the run summary to the flow run: %s", exc)


_starting: threading.Thread | None = None


def prestart(workspace: Path) -> bool:
    """Start Prefect's ephemeral server in a background thread, once per process, unless a
    server is configured; True when this call started it. Called as soon as a run knows it has
    work (its documents changed), so the server's 6-8 s start overlaps the rest of the plan
    and the model load."""
    global _starting
    if _starting is not None or server_configured():
        return False
    _starting = threading.Thread(
        target=_start_ephemeral, args=(workspace,), name="prefect-start", daemon=True
    )
    _starting.start()
    return True


def stop_prestarted() -> None:
    """Stop the server `prestart` just started for a run that turned out to have nothing to
    do (only then: a server an earlier run in this process used stays up for the next)."""
    global _starting
    if _starting is None:
        return
    _starting.join()
    _starting = None
    from prefect.server.api.server import SubprocessASGIServer

    SubprocessASGIServer().stop()


def _start_ephemeral(workspace: Path) -> None:
    from prefect.server.api.server import SubprocessASGIServer

    server = SubprocessASGIServer()  # one per process; the client later finds it running
    server.start()
    if server.server_process is not None:  # see stop_orphaned_server
        (workspace / SERVER_PID).write_text(str(server.server_process.pid))


def stop_orphaned_server(workspace: Path) -> None:
    """Stop the ephemeral Prefect server a killed run left behind. Prefect stops it when the
    run's process exits, but a SIGKILL gives it no chance, and the server would live on."""
    import psutil

    path = workspace / SERVER_PID
    try:
        proc = psutil.Process(int(path.read_text()))
        # orphaned (its run is gone) and still Prefect's, not a process that reused the pid
        if proc.ppid() == 1 and any("prefect" in arg for arg in proc.cmdline()):
            proc.send_signal(signal.SIGTERM)  # psutil checks first that the pid is still it
    except (OSError, ValueError, psutil.Error):
        pass
    path.unlink(missing_ok=True)


def _record_deferred(pipeline_flow: Any, dag: Dag, catalog: Catalog) -> None:
    """Write the flow runs of earlier no-op runs, which did not start Prefect. Prefect stamps
    them now; their names carry the run id, which starts with the time they ran."""
    try:
        deferred = catalog.deferred()
    except EmbedpipeError as exc:  # a busy catalog: these records wait for a later run
        log.warning("could not read earlier no-op runs from the catalog: %s", exc)
        return
    if not deferred:
        return
    from prefect import get_client
    from prefect.states import Completed

    try:
        with get_client(sync_client=True) as client:
            for run in deferred:
                when = f"{run['started_at']:%Y-%m-%d %H:%M:%S %Z}"
                flow_run = client.create_flow_run(
                    pipeline_flow,
                    name=f"{run['pipeline']}-{run['run_id']}",
                    parameters={"pipeline": run["pipeline"], "run_id": run["run_id"]},
                    tags=[*tags_of(dag, run["spec_hash"]), "noop"],
                    state=Completed(
                        message=f"no-op run at {when}: nothing had changed, nothing was "
                        "committed (recorded when Prefect next started)"
                    ),
                )
                catalog.finish_run(run["run_id"], flow_run_id=str(flow_run.id), prefect="recorded")
    except Exception as exc:  # the record can wait for the next run; this run must go on
        log.warning("could not record %d earlier no-op run(s) in Prefect: %s", len(deferred), exc)


def _transient(task: Any, task_run: Any, state: Any) -> bool:
    """Retry only errors that may pass: timeouts, dropped connections, busy files."""
    try:
        state.result()
    except (TimeoutError, ConnectionError):
        return True
    except OSError as exc:
        return exc.errno in (errno.EAGAIN, errno.EBUSY, errno.ETIMEDOUT, errno.EIO)
    except Exception:
        return False
    return False
