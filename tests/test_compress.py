"""The compress step and its codecs: binary, int8, Matryoshka and PCA codes; fitted codecs as
artifacts; two-stage and asymmetric search (issue 15)."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import lancedb
import numpy as np
import pyarrow as pa
import pytest

import embedpipe
from embedpipe.artifacts import Artifacts
from embedpipe.engine.workspace import Workspace
from embedpipe.errors import SpecError, UsageError
from embedpipe.steps.codecs import CODECS, Binary, Int8, Pca
from tests.conftest import CORPUS, write_jsonl

QUERY = "do vitamin supplements prevent hip fractures in the elderly?"


def unit(n: int, d: int, seed: int = 0) -> np.ndarray:
    x = np.random.default_rng(seed).normal(size=(n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


@pytest.mark.parametrize(
    ("method", "keep", "dtype", "width"),
    [("binary", None, np.uint8, 48), ("int8", None, np.int8, 384),
     ("matryoshka", 64, np.float32, 64), ("pca", 128, np.float32, 128)],
)  # fmt: skip
def test_codec_shapes_and_dtypes(method: str, keep: int | None, dtype: type, width: int) -> None:
    x = unit(300, 384)
    codec = CODECS[method](384, keep)
    codec.fit(x)
    codes = codec.encode(x)
    assert codes.dtype == dtype and codes.shape == (300, width)
    arrow = codec.arrow(codes)
    assert arrow.type == codec.code_type() and arrow.type.list_size == width
    assert codec.code_bytes() == width * np.dtype(dtype).itemsize
    if dtype == np.float32:  # re-normalised
        assert np.allclose(np.linalg.norm(codes, axis=1), 1.0, atol=1e-5)
    # the asymmetric score of a float query ranks the codes like the floats do, roughly
    q = x[0]
    scores = codec.score(q, codes)
    assert scores.shape == (300,) and int(np.argmax(scores)) == 0


def test_binary_codes_and_asymmetric_score() -> None:
    x = unit(50, 16, seed=1)
    codec = Binary(16)
    codes = codec.encode(x)
    assert np.array_equal(np.unpackbits(codes, axis=1).astype(bool), x > 0)
    signs = np.unpackbits(codes, axis=1).astype(np.float32) * 2 - 1
    q = unit(1, 16, seed=2)[0]
    assert np.allclose(codec.score(q, codes), signs @ q / np.sqrt(16), atol=1e-5)


def test_int8_score_is_the_dot_product_with_decoded_codes() -> None:
    x = unit(500, 32, seed=3)
    codec = Int8(32)
    codec.fit(x)
    codes = codec.encode(x)
    q = unit(1, 32, seed=4)[0]
    assert np.allclose(codec.score(q, codes), codec.decode(codes) @ q, atol=1e-4)
    assert np.corrcoef(codec.score(q, codes), x @ q)[0, 1] > 0.999


def test_fitted_codec_reloads_bit_identically(tmp_path: Path) -> None:
    x = unit(400, 64, seed=5)
    codec = Pca(64, 16)
    codec.fit(x)
    saved = Artifacts(tmp_path, "codes").save("k", codec.state, {"fit_rows": 400})
    again = Pca(64, 16)
    again.load(saved.arrays())
    assert np.array_equal(again.encode(x), codec.encode(x))
    assert saved.id == "codes/k/v1" and saved.lineage()["fit_rows"] == 400
    assert Artifacts(tmp_path, "codes").save("k", codec.state, {}).version == 2


def test_lance_hamming_order_equals_numpy_popcount(tmp_path: Path) -> None:
    rng = np.random.default_rng(6)
    codes = rng.integers(0, 256, size=(200, 8), dtype=np.uint8)
    flat = pa.array(codes.reshape(-1), pa.uint8())
    table = pa.table({"id": pa.array(range(200)),
                      "code": pa.FixedSizeListArray.from_arrays(flat, 8)})  # fmt: skip
    tbl = lancedb.connect(tmp_path).create_table("codes", table)
    q = codes[7]
    hits = (tbl.search(q, vector_column_name="code").distance_type("hamming")
            .limit(200).bypass_vector_index().to_list())  # fmt: skip
    popcount = np.unpackbits(np.bitwise_xor(codes, q), axis=1).sum(axis=1)
    assert [h["_distance"] for h in hits] == sorted(popcount.tolist())
    assert all(h["_distance"] == popcount[h["id"]] for h in hits)
    assert hits[0]["id"] == 7 and hits[0]["_distance"] == 0


SPEC = """
name: coded
workspace: ws
steps:
  docs: {type: ingest, source: corpus.jsonl, format: beir}
  chunks: {type: chunk, input: docs, strategy: none}
  vectors: {type: encode, input: chunks, batch_size: 8}
  codes: {type: compress, input: vectors, method: pca, dims: 4, fit_rows: 256}
  index: {type: index, input: codes, column: code, rescore: 2}
"""


def test_compress_pipeline(tmp_path: Path, corpus: Path, write_spec: Callable[..., Path]) -> None:
    spec = write_spec(SPEC)
    pipe = embedpipe.load(spec)
    first = pipe.run()
    assert first.status == "completed", first.error
    assert first.steps["codes"].computed == len(CORPUS)
    store = Artifacts(pipe.workspace, "codes")
    (key,) = [p.name for p in store.root.iterdir()]
    fitted = store.latest(key)
    assert fitted is not None and fitted.version == 1
    lineage = fitted.lineage()
    assert lineage["method"] == "pca" and lineage["fit_rows"] == len(CORPUS)
    assert "all-MiniLM-L6-v2" in lineage["model"] and lineage["run_id"] == first.run_id
    state = fitted.arrays()

    rows = pipe.sql("select chunk_id, code, codec, vector from coded order by chunk_id")
    assert {r["codec"] for r in rows} == {fitted.id}
    assert all(len(r["code"]) == 4 and len(r["vector"]) == 384 for r in rows)
    hits = pipe.search(QUERY, 3)
    assert hits[0]["doc_id"] == "d1" and 0 < hits[0]["score"] <= 1.0  # re-scored: cosine

    # An incremental run codes the new document with the codec it has: no re-fit.
    write_jsonl(corpus, [*CORPUS, {"_id": "d9", "title": "Tides", "text": "The moon pulls."}])
    second = embedpipe.load(spec).run()
    assert second.status == "completed", second.error
    assert second.steps["codes"].computed == 1 and second.steps["codes"].cached == len(CORPUS)
    assert [a.version for a in store.versions(key)] == [1]
    assert all(np.array_equal(v, store.latest(key).arrays()[k]) for k, v in state.items())
    noop = embedpipe.load(spec).run()
    assert noop.noop and noop.steps["codes"].computed == 0

    # `pipe fit` makes version 2; searches keep coding queries with version 1 until the next
    # run has re-coded every row with version 2.
    refit = embedpipe.load(spec)
    before = refit.search(QUERY, 3)
    report = refit.fit("codes")
    assert report["artifact"].endswith("/v2") and report["fit_rows"] == len(CORPUS) + 1
    assert refit.search(QUERY, 3) == before  # the table's rows name version 1
    recoded = embedpipe.load(spec).run()
    assert recoded.steps["codes"].computed == len(CORPUS) + 1  # the cache named version 1
    assert {r["codec"] for r in refit.sql("select codec from coded")} == {f"codes/{key}/v2"}
    after = refit.search(QUERY, 3)  # a new table version: queries coded with version 2
    assert after[0]["doc_id"] == "d1"
    # Rolled back, the rows name version 1 again, and so do the queries.
    refit.rollback(recoded.lance_version - 1)
    assert refit.search(QUERY, 3) == before
    with pytest.raises(UsageError, match="trainable steps in this spec: codes"):
        refit.fit("index")

    # A binary-only index keeps no floats; a float query is scored against the bits
    # (asymmetric); int8 codes are scored in process.
    binary = ["steps.codes.method=binary", "steps.codes.dims=null", "steps.index.rescore=null",
              "steps.index.store_vectors=false"]  # fmt: skip
    small = embedpipe.load(spec, overrides=binary)
    done = small.run()
    assert done.status == "completed", done.error
    assert done.steps["vectors"].computed == 0  # codes come from the cached vectors
    ws = Workspace(small.workspace)
    names = ws.connect().open_table("coded").schema.names
    assert "code" in names and "vector" not in names
    assert small.search(QUERY, 1)[0]["doc_id"] == "d1"
    # Hamming codes are scanned in memory by default; LanceDB's flat scan ranks alike (ties
    # may come in another order).
    lance = embedpipe.load(spec, overrides=[*binary, "steps.index.scan=lance"])
    by_store, by_memory = lance.search(QUERY, 10), small.search(QUERY, 10)
    assert [h["score"] for h in by_store] == [h["score"] for h in by_memory]
    assert {(h["chunk_id"], h["score"]) for h in by_store} == {
        (h["chunk_id"], h["score"]) for h in by_memory
    }
    # Without its text: ids, codes and what the engine diffs by; hits carry text "".
    bare = embedpipe.load(spec, overrides=[*binary, "steps.index.store_columns=[]"])
    assert bare.run().status == "completed"
    names = ws.connect().open_table("coded").schema.names
    assert "text" not in names and "title" not in names
    assert {"chunk_id", "doc_id", "content_hash", "code", "codec"} <= set(names)
    top = bare.search(QUERY, 1)[0]
    assert top["doc_id"] == "d1" and top["text"] == "" and top["title"] == ""
    asym = embedpipe.load(spec, overrides=[*binary, "steps.index.asymmetric=true"])
    top = asym.search(QUERY, 3)
    assert top[0]["doc_id"] == "d1" and top[0]["score"] > top[1]["score"]
    int8 = ["steps.codes.method=int8", "steps.codes.dims=null", "steps.index.rescore=null"]
    coded = embedpipe.load(spec, overrides=int8)
    assert coded.run().status == "completed"
    assert coded.search(QUERY, 1)[0]["doc_id"] == "d1"


@pytest.mark.parametrize(
    ("sets", "message"),
    [
        (["steps.codes.dims=null"], "method pca needs `dims`"),
        (["steps.codes.method=binary"], "method binary keeps every dimension"),
        (["steps.index.store_vectors=false"], "store_vectors: false leaves out"),
        (["steps.codes.method=int8", "steps.codes.dims=null", "steps.index.ann.type=ivf_pq"],
         "no ANN index takes it"),
        (["steps.codes.column=text"], "compress needs floats"),
        (["steps.codes.dims=999"], "999 > the 384 dimensions"),
        (["steps.index.column=vector", "steps.index.rescore=null",
          "steps.index.asymmetric=true"], "asymmetric scores a float query against codes"),
        (["steps.codes.output=codec"], "names each row's codec"),
        (["steps.index.store_columns=[codec]"], "'codec' is always kept; columns it can keep:"),
        (["steps.index.store_columns=[body]"], "'body' is not an input column"),
        (["steps.index.rescore=null", "steps.index.scan=memory",
          "steps.index.ann.type=ivf_flat"], "memory scans every row exactly"),
    ],
)  # fmt: skip
def test_compress_spec_errors(
    write_spec: Callable[..., Path], corpus: Path, sets: list[str], message: str
) -> None:
    spec = write_spec(SPEC)
    with pytest.raises(SpecError) as info:
        embedpipe.load(spec, overrides=sets)
    rendered = info.value.render()
    assert message in rendered and "spec.yaml:" in rendered, rendered


def test_every_sweep_setting_is_a_valid_variant_of_a_coded_spec(
    write_spec: Callable[..., Path], corpus: Path
) -> None:
    """A spec that already compresses and re-scores: no setting inherits its index settings."""
    from embedpipe.engine.evaluate import SWEEP, sweep_overrides

    coded = SPEC.replace("method: pca, dims: 4, fit_rows: 256", "method: binary")
    spec = write_spec(coded.replace("rescore: 2}", "rescore: 2, asymmetric: true}"))
    pipe = embedpipe.load(spec)
    settings = sweep_overrides(pipe.dag)
    assert [name for name, _ in settings] == [name for name, _, _ in SWEEP]
    for name, sets in settings:
        variant = embedpipe.load(spec, overrides=sets)  # a SpecError fails the test
        target = variant.dag.targets["index"]
        assert not target.asymmetric or name == "binary-asymmetric"
        assert (target.rescore is not None) == name.startswith("binary+rescore")


def test_lineage_json_is_readable(tmp_path: Path) -> None:
    saved = Artifacts(tmp_path, "s").save("k", {"a": np.arange(3)}, {"model": "m"})
    record = json.loads((saved.path / "lineage.json").read_text())
    assert record["version"] == 1 and record["model"] == "m" and record["fitted_at"]
