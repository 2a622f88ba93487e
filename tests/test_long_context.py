"""The encode step's long-context options (issue 16): position interpolation, TempScale, late
chunking, and their spec errors. The model surgery itself is tested in test_longctx.py."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

import embedpipe
from embedpipe import dag as dag_mod
from embedpipe.engine.cache import fingerprint
from embedpipe.errors import SpecError
from embedpipe.steps.encode import EncodeConfig, auto_temperature, ntk_factor
from tests.conftest import write_jsonl

WORDS = (
    "The committee reviewed the remote control design and agreed on a rubber case. "
    "Marketing reported that young users want a fancy look and feel. "
    "The industrial designer proposed a curved shape with a single scroll wheel. "
)
LONG = [
    {"_id": "m1", "title": "Design meeting", "text": WORDS * 12},
    {"_id": "m2", "title": "Budget meeting", "text": "The budget is twelve euros per unit. " * 30},
    {"_id": "m3", "title": "", "text": "A short note about batteries."},
]

SPEC = """
name: longdoc
workspace: ws
steps:
  docs: {type: ingest, source: corpus.jsonl, format: beir}
  chunks: {type: chunk, input: docs, strategy: tokens, max_tokens: 48, overlap: 8}
  vectors: {type: encode, input: chunks, batch_size: 8}
  index: {type: index, input: vectors}
"""


@pytest.fixture
def spec(tmp_path: Path, write_spec: Callable[..., Path]) -> Path:
    write_jsonl(tmp_path / "corpus.jsonl", LONG)
    return write_spec(SPEC)


def test_new_settings_at_their_defaults_change_no_fingerprint(spec: Path) -> None:
    plain = EncodeConfig(type="encode", input="chunks")
    assert "long_context" not in plain.identity() and "pooling" not in plain.identity()
    late = EncodeConfig(type="encode", input="chunks", pooling="late_chunks")
    assert late.identity()["pooling"] == "late_chunks"
    step = embedpipe.load(spec).dag.steps["vectors"]
    other = embedpipe.load(spec, overrides=["steps.vectors.pooling=late_chunks"]).dag
    assert fingerprint(step) != fingerprint(other.steps["vectors"])
    fast = embedpipe.load(spec, overrides=["steps.vectors.batch_size=2"]).dag.steps["vectors"]
    assert fingerprint(step) == fingerprint(fast)


@pytest.mark.parametrize(
    ("sets", "message"),
    [
        (["steps.vectors.max_tokens=2048"],
         "2048 is beyond all-MiniLM-L6-v2's 512 positions; extend them with long_context"),
        (["steps.vectors.long_context.rope_scaling=ntk", "steps.vectors.max_tokens=2048"],
         "ntk scales rotary positions"),
        (["steps.vectors.long_context.position_interpolation=linear"],
         "but max_tokens is unset: set max_tokens above 512"),
        (["steps.vectors.long_context.temperature=0"], "temperature must be in (0, 4]"),
        (["steps.vectors.late_context=16"], "late_context bounds late chunking's context"),
        (["steps.chunks.max_tokens=400"],
         "steps.chunks makes chunks of up to 400 tokens, but this encoder reads 256"),
    ],
)  # fmt: skip
def test_long_context_spec_errors(spec: Path, sets: list[str], message: str) -> None:
    with pytest.raises(SpecError) as info:
        dag_mod.load(spec, overrides=sets, preflight=True)
    rendered = info.value.render()
    assert message in rendered and "spec.yaml:" in rendered, rendered


def test_auto_temperature_and_ntk_rules() -> None:
    assert auto_temperature(512, 512) == 1.0 and auto_temperature(256, 512) == 1.0
    assert auto_temperature(2048, 512) == pytest.approx(0.9)
    assert auto_temperature(2**20, 512) == 0.8
    assert [ntk_factor(s) for s in (1, 2, 4, 8)] == [1.0, 3.0, 5.0, 10.0]
    assert 3.0 < ntk_factor(3) < 5.0 and ntk_factor(16) > 10.0


def test_late_chunks_and_position_interpolation_end_to_end(spec: Path) -> None:
    plain = embedpipe.load(spec)
    assert plain.run().status == "completed"
    rows = "select chunk_id, doc_id, vector from longdoc order by chunk_id"
    before = {r["chunk_id"]: np.asarray(r["vector"]) for r in plain.sql(rows)}
    plain_hits = plain.search("what shape did the designer propose?", 3)
    assert len({c.split("#")[0] for c in before}) == 3 and len(before) > 6

    late = embedpipe.load(spec, overrides=["steps.vectors.pooling=late_chunks"])
    done = late.run()
    assert done.status == "completed", done.error
    after = {r["chunk_id"]: np.asarray(r["vector"]) for r in late.sql(rows)}
    assert after.keys() == before.keys()  # one row per chunk, same ids
    for cid, v in after.items():
        assert np.isfinite(v).all() and abs(np.linalg.norm(v) - 1) < 1e-4
        cos = float(v @ before[cid])
        # a chunk now carries its document's context: close to, not equal to, its own vector
        assert 0.3 < cos < 0.9999 if cid.startswith(("m1", "m2")) else cos > 0.8, (cid, cos)
    hits = late.search("what shape did the designer propose?", 3)
    assert hits[0]["doc_id"] == "m1"

    # Whole documents past the model's 512 positions, interpolated, with a temperature.
    sets = ["steps.chunks.strategy=none", "steps.vectors.max_tokens=1024",
            "steps.vectors.long_context.position_interpolation=linear",
            "steps.vectors.long_context.temperature=auto"]  # fmt: skip
    long = embedpipe.load(spec, overrides=sets)
    assert long.run().status == "completed"
    docs = long.sql("select doc_id, vector from longdoc order by doc_id")
    assert [r["doc_id"] for r in docs] == ["m1", "m2", "m3"]
    assert long.search("how much does a unit cost?", 1)[0]["doc_id"] == "m2"
    # The changed models were instances of their own: the plain model this process shares is
    # as it was (the same query scores the same against the plain vectors).
    assert plain.run().status == "completed"
    again = embedpipe.load(spec).search("what shape did the designer propose?", 3)
    assert [h["score"] for h in again] == pytest.approx([h["score"] for h in plain_hits], abs=1e-6)


POOLED = SPEC.replace(
    "  index: {type: index, input: vectors}",
    "  docvecs: {type: pool, input: vectors, output: documents}\n"
    "  index: {type: index, input: docvecs}",
)


@pytest.mark.slow  # CI stays under 20 minutes; `make test-slow` runs it
def test_pool_documents_and_fused_document_scores(
    tmp_path: Path, write_spec: Callable[..., Path]
) -> None:
    write_jsonl(tmp_path / "corpus.jsonl", LONG)
    spec = write_spec(POOLED)
    docs = embedpipe.load(spec)
    assert docs.run().status == "completed"
    rows = docs.sql("select chunk_id, doc_id, vector from longdoc order by doc_id")
    assert [r["chunk_id"] for r in rows] == ["m1#doc", "m2#doc", "m3#doc"]
    assert docs.search("how much does a unit cost?", 1)[0]["chunk_id"] == "m2#doc"
    chunks = embedpipe.load(spec, overrides=["steps.index.input=vectors"])
    assert chunks.run().status == "completed"  # encode is cached: the chunk vectors
    for r in rows:
        of = chunks.sql(f"select vector from longdoc where doc_id = '{r['doc_id']}'")
        mean = np.mean([np.asarray(c["vector"]) for c in of], axis=0)
        assert np.allclose(r["vector"], mean / np.linalg.norm(mean), atol=1e-5)

    fused = ["steps.docvecs.output=column", "steps.docvecs.weight=0.5"]
    both = embedpipe.load(spec, overrides=fused)
    assert both.run().status == "completed"
    assert "doc_vector" in both.sql("select * from longdoc limit 1")[0]
    plain = {h["chunk_id"]: h["score"] for h in chunks.search("unit cost", 20)}
    hits = both.search("unit cost", 5)
    assert hits == sorted(hits, key=lambda h: h["score"], reverse=True)
    for h in hits:
        assert h["score"] == pytest.approx(0.5 * plain[h["chunk_id"]] + 0.5 * h["doc_score"])
    off = embedpipe.load(spec, overrides=[*fused[:1], "steps.docvecs.weight=0"])
    assert [h["chunk_id"] for h in off.search("unit cost", 5)] == list(plain)[:5]
    # a table that drops the document vector the fusion stage reads is a spec error
    with pytest.raises(SpecError, match=r"steps\.index: query stage 'fuse_document' of step "
                       r"'docvecs' reads column 'doc_vector'.*does not keep it"):  # fmt: skip
        embedpipe.load(spec, overrides=[*fused, "steps.index.store_vectors=false"])


def test_late_chunks_recompute_a_document_whole(spec: Path, tmp_path: Path) -> None:
    """A document with one chunk missing from the cache is re-encoded whole: its vectors equal
    those of a fresh workspace, never of a document re-assembled from some chunks only."""
    late = ["steps.vectors.pooling=late_chunks"]
    assert embedpipe.load(spec, overrides=late).run().status == "completed"
    changed = [*late, "steps.chunks.overlap=4"]  # m1 and m2 re-chunked from their 2nd chunk on
    again = embedpipe.load(spec, overrides=changed)
    done = again.run()
    assert done.status == "completed", done.error
    assert done.steps["vectors"].cached == 1  # m3, one chunk, unchanged
    fresh = embedpipe.load(spec, overrides=changed, workspace=tmp_path / "fresh")
    assert fresh.run().status == "completed"
    rows = "select chunk_id, vector from longdoc order by chunk_id"
    have = {r["chunk_id"]: r["vector"] for r in again.sql(rows)}
    want = {r["chunk_id"]: r["vector"] for r in fresh.sql(rows)}
    assert have.keys() == want.keys()
    for cid in have:
        assert np.allclose(have[cid], want[cid], atol=1e-5), cid


def test_long_inputs_are_batched_by_length(spec: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    sets = ["steps.chunks.strategy=none", "steps.vectors.max_tokens=1024",
            "steps.vectors.long_context.position_interpolation=linear"]  # fmt: skip
    step = embedpipe.load(spec, overrides=sets).dag.steps["vectors"]
    # batch_size 8 at the model's own 256 tokens: 2,048 tokens a pass past it
    assert [step.per_pass(n) for n in (128, 256, 512, 1024, 4096)] == [8, 8, 4, 2, 1]
    step.setup()
    texts = [WORDS * 12, "A short note.", WORDS * 3, "The budget is twelve euros. " * 30, "Hi."]
    alone = np.stack([step._encode_batch([t], "", 1)[0] for t in texts])
    passes: list[tuple[int, int]] = []
    encode_batch = step._encode_batch

    def spy(part: list[str], prompt: str, batch_size: int) -> np.ndarray:
        passes.append((len(part), batch_size))
        return encode_batch(part, prompt, batch_size)

    monkeypatch.setattr(step, "_encode_batch", spy)
    grouped = step._encode(texts, "")
    # the four texts within the model's 256 tokens in one group; the one of 257-512 tokens alone
    assert sorted(passes) == [(1, 4), (4, 8)]
    np.testing.assert_allclose(grouped, alone, atol=2e-5)


@pytest.mark.slow  # CI stays under 20 minutes; `make test-slow` runs it
def test_late_context_bounds_what_each_chunk_reads(spec: Path) -> None:
    plain = embedpipe.load(spec, overrides=["steps.vectors.backend=torch"])
    assert plain.run().status == "completed"
    rows = "select chunk_id, vector from longdoc order by chunk_id"
    alone = {r["chunk_id"]: np.asarray(r["vector"]) for r in plain.sql(rows)}
    sets = ["steps.vectors.pooling=late_chunks", "steps.vectors.late_context=0"]
    bounded = embedpipe.load(spec, overrides=sets)
    done = bounded.run()
    assert done.status == "completed", done.error
    assert done.steps["vectors"].computed == len(alone)  # another setting: re-encoded
    got = {r["chunk_id"]: np.asarray(r["vector"]) for r in bounded.sql(rows)}
    assert got.keys() == alone.keys()
    # no context: each chunk reads itself and its title, as plain chunking does
    assert min(float(got[c] @ alone[c]) for c in got) > 0.95
