"""`tables: {uri}` (issue 19): a pipeline's Lance tables outside its workspace, in a folder or
an object store. No S3 or GCS is reachable here; Lance's ``file-object-store://`` scheme runs
its object-store code (no renames, conditional commits) on the local disk, so a run, an
incremental run, plan, search, SQL, eval, rollback and a sweep go through the same calls an
``s3://`` URI takes, with the same ``storage_options`` handling."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import lance
import pytest

import embedpipe
from embedpipe.engine.workspace import Workspace
from embedpipe.errors import SpecError
from tests.conftest import CORPUS, write_jsonl

SPEC = """
name: stored
workspace: ws
tables: {{uri: "{uri}"}}
steps:
  docs: {{type: ingest, source: corpus.jsonl, format: beir}}
  chunks: {{type: chunk, input: docs, strategy: tokens, max_tokens: 64, overlap: 8}}
  vectors: {{type: encode, input: chunks, batch_size: 8, backend: torch}}
  index: {{type: index, input: vectors, table: stored}}
"""


def test_tables_in_an_object_store(tmp_path: Path, write_spec: Callable[..., Path]) -> None:
    uri = f"file-object-store://{tmp_path}/bucket/prefix"
    docs = list(CORPUS)
    write_jsonl(tmp_path / "corpus.jsonl", docs)
    pipe = embedpipe.load(write_spec(SPEC.format(uri=uri)))
    first = pipe.run()
    assert first.status == "completed", first.error
    assert first.lance_version == 1
    # The table is in the store; the workspace holds the catalog and caches only.
    assert (tmp_path / "bucket" / "prefix" / "stored.lance").is_dir()
    assert not (tmp_path / "ws" / "lance").exists()
    ws = Workspace.of(pipe.dag.spec)
    assert ws.tables() == ["stored"] and ws.table_exists("stored")
    assert lance.dataset(f"{uri}/stored.lance").count_rows() == first.steps["index"].rows_out

    # Search, SQL and eval read it there.
    hit = pipe.search(docs[2]["text"], 1)[0]
    assert hit["doc_id"] == docs[2]["_id"]
    [row] = pipe.sql("select count(*) as n, min(run_id) as r from stored")
    assert row == {"n": first.steps["index"].rows_out, "r": first.run_id}
    queries, qrels = tmp_path / "q.jsonl", tmp_path / "qrels.tsv"
    write_jsonl(queries, [{"_id": "q", "text": docs[2]["text"]}])
    qrels.write_text(f"query-id\tcorpus-id\tscore\nq\t{docs[2]['_id']}\t1\n")
    result = pipe.eval(queries, qrels, record=False)
    assert result.ndcg_10 == 1.0 and result.index_bytes > 0

    # An incremental run: one document edited, one gone; the plan counts it first.
    docs[1] = {**docs[1], "text": "An entirely new abstract about coral reef bleaching."}
    del docs[4]
    write_jsonl(tmp_path / "corpus.jsonl", docs)
    plan = pipe.plan()
    assert plan.steps["docs"].changed == 1 and plan.steps["docs"].deleted == 1
    second = pipe.run()
    assert second.status == "completed", second.error
    assert second.lance_version == 2 and second.steps["vectors"].computed >= 1
    assert pipe.search("coral reef bleaching", 1)[0]["doc_id"] == docs[1]["_id"]
    ids = {r["doc_id"] for r in pipe.sql("select distinct doc_id from stored")}
    assert ids == {d["_id"] for d in docs}

    # Rollback makes version 1 live again, as version 3, in the store.
    back = pipe.rollback(1)
    assert back["lance_version"] == 3 and back["to_version"] == 1
    assert lance.dataset(f"{uri}/stored.lance").version == 3


def test_a_sweep_leaves_the_stored_table_alone(
    tmp_path: Path, write_spec: Callable[..., Path]
) -> None:
    """`pipe eval --sweep` builds its variants in scratch workspaces: with the tables in a
    store of their own, the variants must not overwrite the spec's table there."""
    uri = f"file-object-store://{tmp_path}/bucket"
    write_jsonl(tmp_path / "corpus.jsonl", list(CORPUS))
    pipe = embedpipe.load(write_spec(SPEC.format(uri=uri)))
    assert pipe.run().status == "completed"
    before = lance.dataset(f"{uri}/stored.lance")
    queries, qrels = tmp_path / "q.jsonl", tmp_path / "qrels.tsv"
    write_jsonl(queries, [{"_id": "q", "text": CORPUS[0]["text"]}])
    qrels.write_text(f"query-id\tcorpus-id\tscore\nq\t{CORPUS[0]['_id']}\t1\n")
    results = pipe.sweep(queries, qrels)
    assert len(results) > 3
    after = lance.dataset(f"{uri}/stored.lance")
    assert after.version == before.version and after.schema == before.schema


@pytest.mark.parametrize(
    ("tables", "message"),
    [
        ('{uri: "s3://"}', "is not a storage URI"),
        ('{uri: "/x", storage_options: {aws_region: eu-west-1}}', "set uri to an s3://"),
        ('{url: "s3://b/p"}', "unknown key"),
        ('{uri: "s3:/bucket/p"}', "neither a folder nor a storage URI"),
    ],
)
def test_bad_tables_settings_are_spec_errors(
    tmp_path: Path, write_spec: Callable[..., Path], tables: str, message: str
) -> None:
    write_jsonl(tmp_path / "corpus.jsonl", list(CORPUS))
    text = SPEC.format(uri="x").replace('{uri: "x"}', tables)
    with pytest.raises(SpecError) as caught:
        embedpipe.load(write_spec(text))
    assert "spec.yaml:3:" in str(caught.value) and message in str(caught.value)
    json.dumps(str(caught.value))  # one plain message


def test_store_settings_as_lance_takes_them(
    tmp_path: Path, write_spec: Callable[..., Path]
) -> None:
    """Any scheme Lance knows (s3+ddb for a DynamoDB commit lock), and options as strings."""
    write_jsonl(tmp_path / "corpus.jsonl", list(CORPUS))
    tables = (
        '{uri: "s3+ddb://b/p?ddbTableName=locks", storage_options: {allow_http: true, timeout: 30}}'
    )
    spec = embedpipe.load(write_spec(SPEC.format(uri="x").replace('{uri: "x"}', tables))).dag.spec
    assert spec.tables == "s3+ddb://b/p?ddbTableName=locks"
    assert spec.spec.tables.storage_options == {"allow_http": "true", "timeout": "30"}
    local = embedpipe.load(write_spec(SPEC.format(uri="shared/t"))).dag.spec
    assert local.tables == str(tmp_path / "shared" / "t")  # a folder: relative to the spec
