"""`pipe schedule`: serve a pipeline as a Prefect deployment that runs on its cron.

The deployment runs the flow below, which runs the pipeline exactly as `pipe run` does (its
flow run is a subflow of the scheduled one). Schedules need a real Prefect server: with none
configured, `pipe schedule` starts the one `pipe ui` manages, so the UI shows the schedule.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
from typing import Any

from embedpipe import _env

# This module is imported only to schedule (`pipe schedule`, a Prefect worker loading the
# flow below): Prefect reads its settings when imported, so the defaults go first.
_env.apply()

from prefect import flow  # noqa: E402

from embedpipe.engine.orchestrator import check_server  # noqa: E402
from embedpipe.errors import RunFailed  # noqa: E402


@flow(
    name="embedpipe-schedule",
    flow_run_name="{pipeline}-scheduled",
    persist_result=False,
    validate_parameters=False,
)
def scheduled_run(
    pipeline: str, spec: str, overrides: list[str] | None = None, workspace: str | None = None
) -> dict[str, Any]:
    """One scheduled run of the pipeline at ``spec``; fails the flow run if the run failed."""
    from embedpipe import dag as dag_mod
    from embedpipe.engine.flow import execute

    dag = dag_mod.load(spec, overrides=overrides, workspace=workspace)
    dag_mod.build(dag.spec, preflight=True)
    result = execute(dag, overrides=overrides, progress=False)
    if result.status != "completed":
        raise RunFailed(
            f"scheduled run {result.run_id} failed: {result.error or 'see its record'}; "
            f'details: pipe sql {spec} "select step, error from step_runs where run_id = '
            f"'{result.run_id}'\""
        )
    return result.to_json()


def serve(
    pipeline: str,
    spec: str,
    *,
    cron: str,
    timezone: str,
    overrides: list[str] | None = None,
    workspace: str | None = None,
    run_now: bool = False,
    on_ready: Any = None,
) -> None:
    """Create (or update) the deployment and serve it until SIGINT/SIGTERM."""
    check_server()  # a server that does not answer: say so, instead of waiting on it
    from prefect import get_client
    from prefect.deployments.runner import EntrypointType
    from prefect.runner import Runner

    runner = Runner(name=f"embedpipe-{pipeline}", pause_on_shutdown=False)
    deployment_id = runner.add_flow(
        scheduled_run,
        **_deployment(pipeline, spec, cron, timezone, overrides, workspace),
        description=f"embedpipe pipeline {pipeline} ({spec}), on cron '{cron}' ({timezone})",
        entrypoint_type=EntrypointType.MODULE_PATH,
        paused=False,
    )
    if run_now:
        with get_client(sync_client=True) as client:
            client.create_flow_run_from_deployment(deployment_id, tags=["run-now"])
    if on_ready:
        on_ready(deployment_id)
    # Ctrl-C stops the runner; the deployment stays, unpaused, for the next pipe schedule.
    # SIGTERM (systemd's stop) takes the same way out.
    signal.signal(signal.SIGTERM, _interrupt)
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(runner.start())


def _deployment(
    pipeline: str,
    spec: str,
    cron: str,
    timezone: str,
    overrides: list[str] | None,
    workspace: str | None,
) -> dict[str, Any]:
    """What a served and a work-pool deployment share: name, schedule, parameters, tags."""
    from prefect.schedules import Cron

    return {
        "name": pipeline,
        "schedules": [Cron(cron, timezone=timezone)],
        "parameters": {
            "pipeline": pipeline,
            "spec": spec,
            "overrides": overrides or [],
            "workspace": workspace,
        },
        "tags": ["embedpipe", f"pipeline:{pipeline}"],
    }


def _interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


def deploy(
    pipeline: str,
    spec: str,
    *,
    pool: str,
    cron: str,
    timezone: str,
    overrides: list[str] | None = None,
    workspace: str | None = None,
) -> str:
    """Create (or update) the deployment on work pool ``pool`` and return its id; a worker
    (`prefect worker start --pool POOL`) runs it. The pool must exist (a `process` pool runs
    flows as local subprocesses: `prefect work-pool create POOL --type process`)."""
    check_server()
    from pathlib import Path

    from prefect import flow as prefect_flow

    package_root = Path(__file__).resolve().parents[2]
    source = prefect_flow.from_source(
        source=str(package_root), entrypoint="embedpipe/engine/schedule.py:scheduled_run"
    )
    deployment_id = source.deploy(
        **_deployment(pipeline, spec, cron, timezone, overrides, workspace),
        work_pool_name=pool,
        build=False,
        push=False,
        print_next_steps=False,
        ignore_warnings=True,
    )
    return str(deployment_id)
