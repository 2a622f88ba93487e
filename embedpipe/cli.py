"""The `pipe` command: thin wrappers over the Python API. See `pipe --help`."""

from __future__ import annotations

import atexit
import json
import os
import sys
from datetime import date, datetime
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table
from rich.tree import Tree
from typer.exceptions import TyperException

from embedpipe import _env
from embedpipe.errors import EXIT_MEANINGS, EmbedpipeError, NotIndexed, SpecError, UsageError

app = typer.Typer(
    name="pipe",
    help="embedpipe: declarative embedding pipelines (YAML → typed DAG → Prefect → LanceDB).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode="rich",
)
out = Console(soft_wrap=True)
err = Console(stderr=True, soft_wrap=True)

SpecArg = Annotated[Path, typer.Argument(help="The pipeline spec (YAML).", show_default=False)]
SetOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--set", help="Override a spec value: dotted.key=value (repeatable).", metavar="KEY=VALUE"
    ),
]
WsOpt = Annotated[
    Path | None, typer.Option("--workspace", help="Use this workspace instead of the spec's.")
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")]


_JSON = False  # the command line asked for --json: every exit prints one JSON object


def _failure_json(error: str, code: int, kind: str, **extra: Any) -> None:
    """What `--json` prints when a command fails: one object, whatever went wrong."""
    meaning = EXIT_MEANINGS.get(code, "failed")
    body = {"status": "failed", "error": error, "error_type": kind, "exit_code": code}
    print(_dump({**body, "meaning": meaning, **extra}), flush=True)


def _fail(exc: EmbedpipeError) -> typer.Exit:
    if isinstance(exc, SpecError):
        err.print(exc.render(excerpt=False), markup=False, highlight=False)
    else:
        err.print(f"error: {exc}", markup=False, highlight=False)
    if _JSON:
        extra: dict[str, Any] = {}
        if isinstance(exc, SpecError):
            extra["errors"] = [
                {"file": i.file, "line": i.line, "col": i.col, "message": i.message}
                for i in exc.issues
            ]
        _failure_json(str(exc), exc.exit_code, type(exc).__name__, **extra)
    return typer.Exit(exc.exit_code)


def _pipeline(spec: Path, sets: list[str] | None, workspace: Path | None) -> Any:
    from embedpipe.api import load

    try:
        return load(spec, overrides=sets, workspace=workspace)
    except EmbedpipeError as exc:
        raise _fail(exc) from None


def _dump(value: Any) -> str:
    def default(o: Any) -> Any:
        if isinstance(o, datetime | date):
            return o.isoformat()
        if hasattr(o, "tolist"):
            return o.tolist()
        return str(o)

    return json.dumps(value, default=default, ensure_ascii=False)


@app.command()
def validate(spec: SpecArg, sets: SetOpt = None, workspace: WsOpt = None) -> None:
    """Parse and type-check SPEC; print its DAG with each edge's schema.

    Exit 0 when valid; 2 with every error as PATH:LINE:COL when not. Writes nothing.

    Example: pipe validate pipelines/quickstart.yaml
    """
    from embedpipe import dag as dag_mod
    from embedpipe.schemas import describe

    try:
        dag = dag_mod.load(spec, overrides=sets, workspace=workspace, preflight=True)
    except EmbedpipeError as exc:
        raise _fail(exc) from None
    s = dag.spec
    title = f"[bold]{s.name}[/]" + (f" — {s.spec.description}" if s.spec.description else "")
    tree = Tree(f"{title}\nspec {s.hash[:8]} · workspace {s.workspace}")

    def add(node: Tree, name: str, seen: set[str]) -> None:
        step = dag.steps[name]
        label = f"[bold cyan]{name}[/] [dim]({step.type})[/]"
        branch = node.add(label)
        if name in seen:
            return
        seen.add(name)
        for child in step.downstream:
            edge = branch.add(f"[green]─▶[/] {describe(dag.schemas[name])}")
            add(edge, child.name, seen)

    seen: set[str] = set()
    for name in dag.order:
        if not dag.steps[name].upstream:
            add(tree, name, seen)
    out.print(tree, soft_wrap=False)
    out.print(f"[green]✓[/] {spec}: {len(dag.steps)} steps, valid")


@app.command()
def run(
    spec: SpecArg,
    sets: SetOpt = None,
    workspace: WsOpt = None,
    as_json: JsonOpt = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bars.")] = False,
    verbose: Annotated[
        bool, typer.Option("--verbose", "-v", help="Also print Prefect's flow and task run logs.")
    ] = False,
    strict: Annotated[
        bool,
        typer.Option("--strict", help="Fail the run (commit nothing) if any input is skipped."),
    ] = False,
    runner: Annotated[
        str | None,
        typer.Option(
            "--runner",
            help="Execute this run on another executor (local, ray, a plugin's); the spec's "
            "runner keys apply when it names the same one.",
            metavar="TYPE",
        ),
    ] = None,
) -> None:
    """Plan SPEC, then run it as one Prefect flow run (one task per step) and commit the index.

    A run with nothing to do commits nothing and does not start Prefect.
    Exit 0: completed; 3: completed, but inputs were skipped (reasons: pipe sql SPEC
    "select * from skipped"); 1: failed, nothing committed; 2: invalid spec.

    Example: pipe run pipelines/quickstart.yaml --set steps.chunks.max_tokens=128 --json
    """
    if runner and _pipeline(spec, None, workspace).dag.spec.spec.runner.type != runner:
        # Another executor: its defaults, not the keys the spec gave its own; then --set.
        sets = [f"runner={{type: {runner}}}", *(sets or [])]
    pipeline = _pipeline(spec, sets, workspace)  # before the engine's heavy imports: fail fast
    from embedpipe.engine.progress import summary

    try:
        result = pipeline.run(console=err, progress=not quiet, prefect_logs=verbose, strict=strict)
    except EmbedpipeError as exc:
        raise _fail(exc) from None
    (err if as_json else out).print(summary(result))
    if result.error:
        err.print(f"error: {result.error}", markup=False, highlight=False)
    if result.warning:
        err.print(
            f"{'error' if result.record_lost else 'warning'}: {result.warning}",
            markup=False,
            highlight=False,
        )
    if result.skipped and not result.error:
        err.print(
            f"{result.skipped} input(s) skipped; reasons: pipe sql {spec} "
            f"\"select step, item, reason from skipped where run_id = '{result.run_id}'\"",
            markup=False,
            highlight=False,
        )
    code = 1 if result.status != "completed" or result.record_lost else 0
    code = code or (SKIPPED_EXIT if result.skipped else 0)
    meaning = EXIT_MEANINGS[code]
    if result.record_lost:
        meaning = (
            f"the run {result.status} (see lance_version) but its record could not be written "
            "to the catalog"
        )
    if as_json:
        print(_dump({**result.to_json(), "exit_code": code, "meaning": meaning}))
    raise typer.Exit(code)


SKIPPED_EXIT = 3  # completed, but some inputs were skipped


@app.command()
def plan(
    spec: SpecArg,
    sets: SetOpt = None,
    workspace: WsOpt = None,
    as_json: JsonOpt = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bars.")] = False,
) -> None:
    """Show what `pipe run` would do, per step, without writing anything.

    Documents and index rows are compared with the live index (new, changed, deleted);
    chunk and encode show what they would compute and what they take from their caches, with
    an estimate of the encode time from earlier runs. Loads no model, starts no Prefect.

    Example: pipe plan pipelines/scifact.yaml
    """
    pipeline = _pipeline(spec, sets, workspace)
    from embedpipe.engine.progress import plan_table

    try:
        result = pipeline.plan(console=err, progress=not quiet)
    except EmbedpipeError as exc:
        raise _fail(exc) from None
    if as_json:
        print(_dump(result.to_json()))
    else:
        out.print(plan_table(result))


@app.command()
def search(
    spec: SpecArg,
    query: Annotated[str, typer.Argument(help="The query text.")],
    k: Annotated[int, typer.Option("-k", "--k", min=1, help="How many hits.")] = 10,
    step: Annotated[str | None, typer.Option(help="Index step (default: the last).")] = None,
    keep_all: Annotated[
        bool,
        typer.Option("--all", help="Keep the hits a filter step drops (marked kept: false)."),
    ] = False,
    sets: SetOpt = None,
    workspace: WsOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Search SPEC's index: top K chunks for QUERY, best first.

    Example: pipe search pipelines/scifact.yaml "vitamin D and bone fractures" -k 5
    """
    pipeline = _pipeline(spec, sets, workspace)
    try:
        hits = pipeline.search(query, k, step=step, keep_all=keep_all)
    except EmbedpipeError as exc:
        raise _fail(exc) from None
    if as_json:
        # §9: doc_id, chunk_id, score, text, then whatever query stages added (relevance, kept)
        first = ("doc_id", "chunk_id", "score", "text")
        print(_dump([{**{c: h[c] for c in first}, **_added(h, first)} for h in hits]))
        return
    table = Table(title=f"{pipeline.name}: {query!r}")
    marked = any("relevance" in h for h in hits)  # a filter step's calibrated score
    cols = [("#", "right"), ("score", "right"), *([("relevance", "right")] if marked else []),
            ("chunk", "left"), ("text", "left")]  # fmt: skip
    for col, justify in cols:
        table.add_column(col, justify=justify)  # type: ignore[arg-type]
    for i, h in enumerate(hits, 1):
        text = " ".join(h["text"].split())
        rel = (
            [f"{h['relevance']:.3f}" + ("" if h.get("kept", True) else " (dropped)")]
            if marked
            else []
        )
        table.add_row(
            str(i),
            f"{h['score']:.3f}",
            *rel,
            h["chunk_id"],
            (text[:160] + "…") if len(text) > 160 else text,
        )
    out.print(table)
    if marked and not keep_all and len(hits) < k:
        err.print("hits below the relevance threshold were dropped (--all shows them)")


def _added(hit: dict[str, Any], first: tuple[str, ...]) -> dict[str, Any]:
    return {c: v for c, v in hit.items() if c not in first and c != "title"}


@app.command("eval")
def eval_(
    spec: SpecArg,
    queries: Annotated[
        Path, typer.Option("--queries", help='BEIR queries.jsonl ({"_id", "text"} per line).')
    ],
    qrels: Annotated[
        Path, typer.Option("--qrels", help="BEIR qrels TSV (query-id, corpus-id, score).")
    ],
    k: Annotated[
        int,
        typer.Option(
            "-k",
            "--k",
            min=10,
            help="Documents retrieved per query (at least 100: recall@100 needs them).",
        ),
    ] = 100,
    sweep: Annotated[
        bool, typer.Option("--sweep", help="Every compression setting, on this index's vectors.")
    ] = False,
    plot: Annotated[
        Path | None,
        typer.Option(
            "--plot",
            help="A PNG: with --sweep, quality vs cost; else the filter step's precision-recall "
            "curve against the raw score's.",
        ),
    ] = None,
    step: Annotated[str | None, typer.Option(help="Index step (default: the last).")] = None,
    sets: SetOpt = None,
    workspace: WsOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Measure SPEC's index on BEIR queries and qrels: nDCG@10, recall@10/100, MRR@10, bytes
    per vector, index bytes, latency p50/p95. Each result is a row of the `evals` table.

    Example: pipe eval pipelines/scifact-whole.yaml --queries ../shared/data/scifact/queries.jsonl
    --qrels ../shared/data/scifact/qrels/test.tsv --sweep --plot sweep.png
    """
    pipeline = _pipeline(spec, sets, workspace)
    if plot is not None and not sweep and not pipeline.filters(step):
        from embedpipe.engine.evaluate import NO_FILTER_PLOT

        raise _fail(UsageError(NO_FILTER_PLOT))
    shown = []

    def show(result: Any) -> None:
        shown.append(result)
        if not as_json:
            r = result
            err.print(f"  {r.config}: nDCG@10 {r.ndcg_10:.4f}, {r.bytes_per_vector:g} B/vector, "
                      f"p50 {r.latency_ms_p50:.1f} ms")  # fmt: skip

    try:
        if sweep:
            if not as_json:
                err.print(f"sweeping {len(_sweep_names())} settings on {pipeline.name}'s vectors")
            results = pipeline.sweep(queries, qrels, k=k, step=step, on_result=show)
        else:
            results = [pipeline.eval(queries, qrels, k=k, step=step)]
        if plot is not None:
            pipeline.plot(results, plot)
    except EmbedpipeError as exc:
        raise _fail(exc) from None
    if as_json:
        body = [r.to_json() for r in results]
        print(_dump(body if sweep else {k: v for k, v in body[0].items() if k != "config"}))
        return
    table = Table(title=f"{pipeline.name}: {results[0].queries} queries, k={k}")
    heads = ("config", "nDCG@10", "R@10", "R@100", "MRR@10", "B/vector", "index MiB",
             "p50 ms", "p95 ms")  # fmt: skip
    for h in heads:
        table.add_column(h, justify="left" if h == "config" else "right")
    base = results[0].ndcg_10 or 1.0
    for r in results:
        ratio = f" ({r.ndcg_10 / base:.3f})" if sweep else ""
        table.add_row(
            r.config, f"{r.ndcg_10:.4f}{ratio}", f"{r.recall_10:.4f}", f"{r.recall_100:.4f}",
            f"{r.mrr_10:.4f}", f"{r.bytes_per_vector:g}", f"{r.index_bytes / 2**20:.2f}",
            f"{r.latency_ms_p50:.1f}", f"{r.latency_ms_p95:.1f}",
        )  # fmt: skip
    out.print(table)
    for r in results:
        if f := r.extra.get("filter"):
            out.print(f"{r.config}: filter at relevance >= {f['threshold']}: precision "
                      f"{f['precision']:.3f}, recall {f['recall']:.3f}, F1 {f['f1']:.3f}, PR-AUC "
                      f"{f['pr_auc']:.3f}; one raw-score threshold ({f['baseline_threshold']:.3f}) "
                      f"at that recall: precision {f['baseline_precision']:.3f}, PR-AUC "
                      f"{f['baseline_pr_auc']:.3f}")  # fmt: skip
        if r.ann_recall_10 is not None:
            out.print(f"{r.config}: the ANN index's recall@10 against exact search: "
                      f"{r.ann_recall_10:.4f}")  # fmt: skip
    if plot is not None:
        out.print(f"plot: {plot}")


@app.command()
def fit(
    spec: SpecArg,
    step: Annotated[str, typer.Option("--step", help="The trainable step to fit.")],
    queries: Annotated[
        Path | None,
        typer.Option(
            "--queries",
            help="BEIR queries.jsonl (steps that learn from queries: the relevance adapter).",
        ),
    ] = None,
    qrels: Annotated[Path | None, typer.Option("--qrels", help="BEIR qrels TSV.")] = None,
    sets: SetOpt = None,
    workspace: WsOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Fit a trainable step (an int8 or PCA codec, a relevance adapter) as a new versioned
    artifact from what the last run computed; the next run uses it.

    Example: pipe fit spec.yaml --step codes
    """
    pipeline = _pipeline(spec, sets, workspace)
    try:
        report = pipeline.fit(step, queries=queries, qrels=qrels)
    except EmbedpipeError as exc:
        raise _fail(exc) from None
    if as_json:
        print(_dump(report))
        return
    details = ", ".join(f"{k} {v}" for k, v in report.items() if k not in ("step", "artifact"))
    out.print(f"fitted {report['step']}: artifact {report['artifact']} ({details})")
    out.print(f"the next run uses it: pipe run {spec}")


def _sweep_names() -> list[str]:
    from embedpipe.engine.evaluate import SWEEP

    return [name for name, _, _ in SWEEP]


@app.command()
def sql(
    spec: SpecArg,
    query: Annotated[str, typer.Argument(help="A DuckDB SELECT.")],
    sets: SetOpt = None,
    workspace: WsOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Query SPEC's index tables and run catalog with DuckDB (read-only).

    Views: every Lance table of the workspace by name, and the catalog's runs, step_runs and
    skipped. Example: pipe sql pipelines/scifact.yaml "select count(distinct doc_id) from scifact"
    """
    pipeline = _pipeline(spec, sets, workspace)
    try:
        cols, rows = pipeline.sql_rows(query)
    except EmbedpipeError as exc:
        raise _fail(exc) from None
    if as_json:
        print(_dump([dict(zip(cols, r, strict=True)) for r in rows]))
        return
    table = Table()
    for c in cols:
        table.add_column(c)
    for r in rows:
        table.add_row(*(_cell(v) for v in r))
    out.print(table)


def _cell(v: Any) -> str:
    if isinstance(v, list | tuple) and len(v) > 6:  # a vector: show its head and length
        head = ", ".join(f"{x:.3f}" if isinstance(x, float) else str(x) for x in v[:4])
        return f"[{head}, ...] ({len(v)})"
    return "" if v is None else str(v)


@app.command()
def runs(
    spec: SpecArg,
    limit: Annotated[int, typer.Option("-n", min=1, help="How many runs (at least 1).")] = 20,
    versions: Annotated[
        bool, typer.Option("--versions", help="With --json: the index versions instead.")
    ] = False,
    artifacts: Annotated[
        bool,
        typer.Option("--artifacts", help="With --json: the fitted artifacts (pipe fit) instead."),
    ] = False,
    sets: SetOpt = None,
    workspace: WsOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Show SPEC's run history from the catalog, newest first, its index versions and its
    fitted artifacts (codecs, relevance adapters).

    Example: pipe runs pipelines/scifact.yaml -n 5
    """
    pipeline = _pipeline(spec, sets, workspace)
    try:
        rows = pipeline.runs(limit)
        vers = pipeline.versions() if versions or not as_json else []
    except EmbedpipeError as exc:
        if not isinstance(exc, NotIndexed):
            raise _fail(exc) from None
        vers = []
    if versions and artifacts:
        raise _fail(UsageError("--versions and --artifacts each choose what --json prints: "
                               "give one"))  # fmt: skip
    fitted = pipeline.artifacts()
    if as_json:
        print(_dump(fitted if artifacts else vers if versions else rows))
        return
    table = Table(title=f"{pipeline.name}: runs")
    for c in ("run_id", "status", "started", "seconds", "version", "spec", "note"):
        table.add_column(c, no_wrap=c != "note")
    for r in rows:
        note = r["error"] or ""
        if r["rolled_back_to"] is not None:
            note = f"rollback to v{r['rolled_back_to']}"
        elif r["noop"]:
            note = "nothing to do"
        table.add_row(
            r["run_id"],
            r["status"],
            f"{r['started_at']:%Y-%m-%d %H:%M}" if r["started_at"] else "",
            f"{r['seconds']:.1f}" if r["seconds"] is not None else "",
            str(r["lance_version"] or ""),
            (r["spec_hash"] or "")[:8],
            note[:80],
            style="red" if r["status"] == "failed" else None,
        )
    out.print(table)
    if vers:
        vt = Table(title=f"{pipeline.name}: index versions (pipe rollback {spec} --to-version N)")
        for c in ("version", "committed", "rows", "run_id", "note"):
            vt.add_column(c)
        for v in vers:
            vt.add_row(
                str(v["version"]),
                str(v["timestamp"])[:19],
                str(v["rows"] or ""),
                v["run_id"] or "",
                "; ".join(x for x in ("live" if v["live"] else "", v["note"] or "") if x),
                style="bold" if v["live"] else None,
            )
        out.print(vt)
    if fitted:
        at = Table(title=f"{pipeline.name}: fitted artifacts (pipe fit {spec} --step NAME)")
        for c in ("artifact", "fitted", "model", "fit", "report"):
            at.add_column(c, no_wrap=c != "report")
        for a in fitted:
            report = ", ".join(f"{k} {v}" for k, v in (a["metrics"] or {}).items())
            at.add_row(a["artifact"], str(a["fitted_at"] or "")[:16], a["model"] or "",
                       a["run_id"] or "", report[:80])  # fmt: skip
        out.print(at)


@app.command()
def rollback(
    spec: SpecArg,
    to_version: Annotated[
        int, typer.Option("--to-version", help="The index version to make live again.")
    ],
    step: Annotated[
        str | None, typer.Option("--step", help="The index step (default: the last one).")
    ] = None,
    sets: SetOpt = None,
    workspace: WsOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Make an older version of SPEC's index live again, as a new version (undoable).

    The next `pipe run` brings the index back in line with the sources, from the caches.
    Versions on disk: pipe runs SPEC.

    Example: pipe rollback pipelines/scifact.yaml --to-version 3
    """
    pipeline = _pipeline(spec, sets, workspace)
    try:
        done = pipeline.rollback(to_version, step=step)
    except EmbedpipeError as exc:
        raise _fail(exc) from None
    if as_json:
        print(_dump(done))
    else:
        out.print(
            f"[green]✓[/] {done['table']}: v{done['to_version']} is live again as "
            f"v{done['lance_version']} ({done['rows']} rows; was v{done['from_version']})"
        )
    if done.get("warning"):
        err.print(f"warning: {done['warning']}", markup=False, highlight=False)


@app.command()
def schedule(
    spec: SpecArg,
    cron: Annotated[
        str | None, typer.Option("--cron", help="Cron expression (default: the spec's).")
    ] = None,
    timezone: Annotated[
        str | None, typer.Option("--timezone", help="IANA time zone (default: the spec's, UTC).")
    ] = None,
    run_now: Annotated[bool, typer.Option("--run-now", help="Also run once right away.")] = False,
    port: Annotated[int, typer.Option("--port", help="Port for pipe ui if none runs.")] = 4200,
    pool: Annotated[
        str | None,
        typer.Option("--pool", help="Deploy to this work pool and return; a worker runs it."),
    ] = None,
    sets: SetOpt = None,
    workspace: WsOpt = None,
) -> None:
    """Serve SPEC as a Prefect deployment on its cron, in the foreground (Ctrl-C stops it);
    or, with --pool, create the deployment on a work pool and return.

    Needs a Prefect server: PREFECT_API_URL, or the one `pipe ui` runs (started if needed).
    Runs as a systemd service or under a Prefect work pool too: see docs/scheduling.md.

    Example: pipe schedule pipelines/scifact.yaml --cron "0 2 * * *" --run-now
    """
    import os

    pipeline = _pipeline(spec, sets, workspace)
    planned = pipeline.dag.spec.spec.schedule
    cron = cron or (planned.cron if planned else None)
    tz = timezone or (planned.timezone if planned else "UTC")
    if not cron:
        err.print(
            f'error: {spec} has no schedule: add `schedule: {{cron: "0 2 * * *"}}` to it, '
            "or pass --cron",
            markup=False,
        )
        raise typer.Exit(2)
    from embedpipe.spec.models import ScheduleSpec

    try:
        ScheduleSpec(cron=cron, timezone=tz)
    except ValueError as exc:
        err.print(f"error: --cron/--timezone: {exc}", markup=False)
        raise typer.Exit(2) from None
    if not os.environ.get("PREFECT_API_URL"):  # before Prefect is imported: it reads it once
        from embedpipe.engine import ui as ui_mod

        try:
            state = ui_mod.start(port)
        except EmbedpipeError as exc:
            raise _fail(exc) from None
        os.environ["PREFECT_API_URL"] = state["api_url"]
        err.print(f"Prefect server: {state['url']} (pipe ui --stop stops it)")
    from embedpipe.engine.schedule import deploy, serve

    api = os.environ["PREFECT_API_URL"].rstrip("/")
    ui_url = api[: -len("/api")] if api.endswith("/api") else api
    spec_path = str(pipeline.dag.spec.path.resolve())
    ws_path = str(workspace.resolve()) if workspace else None
    if pool:
        if run_now:
            err.print("error: --run-now serves; with --pool, a worker runs the deployment")
            raise typer.Exit(2)
        deployment_id = deploy(
            pipeline.name, spec_path, pool=pool, cron=cron, timezone=tz,
            overrides=sets, workspace=ws_path,
        )  # fmt: skip
        out.print(
            f"deployment embedpipe-schedule/{pipeline.name} on pool '{pool}', cron '{cron}' "
            f"({tz}): {ui_url}/deployments/deployment/{deployment_id}\n"
            f"start a worker: prefect worker start --pool {pool}",
            markup=False,
        )
        return

    def ready(deployment_id: object) -> None:
        err.print(
            f"serving {pipeline.name} on cron '{cron}' ({tz}); deployment "
            f"{ui_url}/deployments/deployment/{deployment_id}; Ctrl-C stops serving",
            markup=False,
        )

    serve(
        pipeline.name,
        spec_path,
        cron=cron,
        timezone=tz,
        overrides=sets,
        workspace=ws_path,
        run_now=run_now,
        on_ready=ready,
    )
    err.print("stopped serving; the deployment stays (unpaused) for the next pipe schedule")


@app.command()
def ui(
    port: Annotated[int, typer.Option("--port", help="Port on 127.0.0.1.")] = 4200,
    stop: Annotated[bool, typer.Option("--stop", help="Stop the server pipe ui started.")] = False,
    as_json: JsonOpt = False,
) -> None:
    """Start a local Prefect server and UI on 127.0.0.1 in the background; later `pipe run`
    and `pipe schedule` report to it. `pipe ui --stop` stops it.

    A PREFECT_API_URL you set yourself always wins over this server.

    Example: pipe ui --port 4200
    """
    from embedpipe.engine import ui as ui_mod

    try:
        state = ui_mod.stop() if stop else ui_mod.start(port)
    except EmbedpipeError as exc:
        raise _fail(exc) from None
    if as_json:
        print(_dump(state or {}))
        return
    if stop:
        out.print(f"stopped the Prefect server at {state['url']}" if state else "no server running")
        return
    assert state is not None
    verb = "already running" if state["already_running"] else "started"
    out.print(f"Prefect UI {verb}: {state['url']}  (log: {state['log']}; stop: pipe ui --stop)")
    if _env.USER_API_URL and _env.USER_API_URL.rstrip("/") != state["api_url"]:
        out.print(f"note: PREFECT_API_URL={_env.USER_API_URL} is set, so runs report there")


@app.command()
def schema(
    output: Annotated[
        Path | None, typer.Option("-o", "--output", help="Write to this file.")
    ] = None,
) -> None:
    """Print (or write) the JSON Schema of pipeline specs, for editor validation.

    Example: pipe schema -o embedpipe.schema.json
    """
    from embedpipe.spec.jsonschema import json_schema

    text = json.dumps(json_schema(), indent=2)
    if output:
        output.write_text(text + "\n")
        err.print(f"wrote {output}")
    else:
        print(text)


def _wants_json(argv: list[str]) -> bool:
    return "--json" in argv[: argv.index("--")] if "--" in argv else "--json" in argv


def main() -> None:
    """`pipe`: every failure ends as one sentence on stderr (and, with --json, one JSON object
    on stdout) with an exit code from ``EXIT_MEANINGS``; never a bare traceback."""
    global _JSON
    _env.apply()  # the environment defaults (HF offline, no Prefect telemetry) first
    _JSON = _wants_json(sys.argv[1:])
    code = 0
    try:
        rv = app(standalone_mode=False)
        code = rv if isinstance(rv, int) else 0
    except typer.Exit as exc:
        code = exc.exit_code
    except TyperException as exc:  # a bad option or argument: click says which
        exc.show()  # type: ignore[attr-defined]
        code = exc.exit_code  # type: ignore[attr-defined]
        if _JSON:
            _failure_json(exc.format_message(), code, "UsageError")  # type: ignore[attr-defined]
    except (KeyboardInterrupt, typer.Abort):
        err.print("interrupted; nothing was committed by the interrupted step")
        code = 130
        if _JSON:
            _failure_json("interrupted (Ctrl-C)", code, "Interrupted")
    except EmbedpipeError as exc:
        code = _fail(exc).exit_code
    except SystemExit as exc:
        if isinstance(exc.code, str):
            err.print(exc.code, markup=False)
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    except Exception as exc:  # a bug: say so in one line; the traceback on request
        code = 1
        what = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
        err.print(
            f"internal error: {what}. This is a bug in embedpipe (or a library it uses); "
            "please report it with the command line. Set EMBEDPIPE_DEBUG=1 for the traceback.",
            markup=False,
            highlight=False,
        )
        if os.environ.get("EMBEDPIPE_DEBUG"):
            import traceback

            traceback.print_exception(exc, file=sys.stderr)
        if _JSON:
            _failure_json(what, code, "InternalError")
    # Exit without tearing down the interpreter: freeing torch, Lance and Prefect objects one by
    # one takes ~2 s and writes nothing. Exit handlers (Prefect stopping its server, flushing
    # its logs) still run first, and every file we write is closed by then.
    atexit._run_exitfuncs()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":
    main()
