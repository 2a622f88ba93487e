"""Re-runs reuse cached chunk and encode outputs: only new or changed documents are worked on."""

from __future__ import annotations

import shutil
from pathlib import Path

import lance

import embedpipe
from embedpipe import models
from embedpipe.engine.flow import RunResult
from tests.conftest import CORPUS, write_jsonl


def counts(result: RunResult) -> dict[str, tuple[int, int, int]]:
    return {n: (s.computed, s.cached, s.rows_out) for n, s in result.steps.items()}


def test_unchanged_rerun_encodes_nothing(basic_spec: Path) -> None:
    pipe = embedpipe.load(basic_spec)
    first = pipe.run()
    second = pipe.run()
    assert second.status == "completed", second.error
    c = counts(second)
    assert c["chunks"] == (0, 6, 6) and c["vectors"] == (0, 6, 6) and c["index"] == (0, 6, 6)
    # Rows nobody touched still name the run that wrote them, and nothing was committed.
    assert pipe.sql("select distinct run_id from tiny") == [{"run_id": first.run_id}]
    assert second.lance_version is None and second.to_json()["lance_version"] == 1
    runs = pipe.sql("select lance_version from runs order by started_at")
    assert [r["lance_version"] for r in runs] == [1, None]
    for s in second.steps.values():
        assert s.computed + s.cached == s.rows_out


def test_edit_and_delete_touch_only_those_documents(basic_spec: Path, corpus: Path) -> None:
    pipe = embedpipe.load(basic_spec)
    assert pipe.run().status == "completed"
    docs = [dict(d) for d in CORPUS if d["_id"] != "d6"]
    docs[2]["text"] = "Ash clouds from eruptions ground flights across Europe in 2010."
    write_jsonl(corpus, docs)
    result = pipe.run()
    c = counts(result)
    assert c["chunks"] == (1, 4, 5) and c["vectors"] == (1, 4, 5) and c["index"] == (1, 4, 5)
    assert result.steps["index"].deleted == 1 and result.lance_version == 2
    dupes = pipe.sql("select chunk_id, count(*) as n from tiny group by 1 having n > 1")
    assert dupes == []
    # The previous version stays readable, whole.
    old = lance.dataset(str(pipe.workspace / "lance" / "tiny.lance"), version=1)
    assert old.count_rows() == 6
    assert pipe.search("flights grounded by volcanic ash", k=1)[0]["doc_id"] == "d3"
    assert pipe.sql("select count(*) as n from tiny where doc_id = 'd6'") == [{"n": 0}]


def test_chunk_config_change_rechunks_and_reencodes(basic_spec: Path) -> None:
    embedpipe.load(basic_spec).run()
    changed = embedpipe.load(
        basic_spec, overrides=["steps.chunks.max_tokens=16", "steps.chunks.overlap=2"]
    )
    result = changed.run()
    c = counts(result)
    assert c["chunks"][0] == c["chunks"][2] > 6  # every document re-chunked, into more chunks
    assert c["vectors"][0] == c["vectors"][2]  # new chunk texts: all encoded
    assert changed.sql("select count(distinct chunk_id) as n from tiny") == [{"n": c["index"][2]}]


def test_model_change_reencodes_everything(basic_spec: Path, tmp_path: Path) -> None:
    embedpipe.load(basic_spec).run()
    other = tmp_path / "my-model"  # the same weights under another name: a different model
    shutil.copytree(models.resolve(models.DEFAULT_MODEL).location, other)
    pipe = embedpipe.load(basic_spec, overrides=[f"steps.vectors.model={other}"])
    result = pipe.run()
    assert result.status == "completed", result.error
    assert counts(result)["vectors"] == (6, 0, 6) and counts(result)["index"] == (6, 0, 6)
    assert pipe.sql("select distinct model from tiny") == [{"model": str(other)}]
