"""The encode step's fast CPU backends (issue 18): OpenVINO and ONNX Runtime exports, int8,
the quality gate, the export as a workspace artifact, and the cache fingerprint."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

import embedpipe
from embedpipe import dag as dag_mod
from embedpipe import models
from embedpipe.artifacts import all_artifacts
from embedpipe.engine.cache import fingerprint
from embedpipe.errors import QualityGateError, SpecError
from embedpipe.steps import backends
from embedpipe.steps.encode import EncodeConfig

TEXTS = [
    "Vitamin D supplementation reduced hip fractures in older adults.",
    "Honeybees share flower locations with a waggle dance.",
    "A sourdough starter is a culture of wild yeast and lactic acid bacteria, fed daily "
    "with flour and water, and kept warm until it doubles.",
    "short",
]


TORCH = ["steps.vectors.backend=torch"]


@pytest.fixture(scope="module")
def model() -> object:
    return models.load(models.resolve(models.DEFAULT_MODEL, None), "cpu")


@pytest.mark.parametrize(("backend", "precision"), [("openvino", "fp32"), ("onnx", "fp32")])
def test_fp32_exports_match_torch(model: object, tmp_path: Path, backend: str, precision: str):
    backends.export(model, backend, "none", tmp_path, TEXTS)
    run = backends.load(tmp_path, backend, precision)
    ours = backends.encode(model, run, TEXTS, batch_size=2)
    theirs = model.encode(TEXTS, normalize_embeddings=True)  # type: ignore[attr-defined]
    mean, low = backends.agreement(theirs, ours)
    assert low >= 0.9999, (mean, low)
    assert ours.shape == (4, 384) and np.allclose(np.linalg.norm(ours, axis=1), 1, atol=1e-5)
    # the texts' order is kept whatever order the batches ran in
    assert np.allclose(backends.encode(model, run, TEXTS[::-1], batch_size=3), ours[::-1],
                       atol=1e-5)  # fmt: skip


def test_backend_is_in_the_fingerprint_and_batch_size_is_not(basic_spec: Path) -> None:
    torch_step = embedpipe.load(basic_spec, overrides=TORCH).dag.steps["vectors"]
    plain = EncodeConfig(type="encode", input="chunks")
    assert not {"backend", "quantize", "precision", "min_cosine"} & set(plain.identity())
    over = ["steps.vectors.backend=onnx"]
    onnx = embedpipe.load(basic_spec, overrides=over).dag.steps["vectors"]
    int8 = embedpipe.load(basic_spec, overrides=[*over, "steps.vectors.quantize=int8"])
    fast = embedpipe.load(basic_spec, overrides=[*over, "steps.vectors.batch_size=2",
                                                 "steps.vectors.min_cosine=0.5"])  # fmt: skip
    prints = [fingerprint(s) for s in (torch_step, onnx, int8.dag.steps["vectors"])]
    assert len(set(prints)) == 3
    assert fingerprint(fast.dag.steps["vectors"]) == fingerprint(onnx)
    assert onnx.made_by() == "onnx" and int8.dag.steps["vectors"].made_by() == "onnx/int8"
    # what made the vectors is named from the settings, never from this machine's CPU
    ov = embedpipe.load(basic_spec, overrides=["steps.vectors.precision=fp32"])
    assert embedpipe.load(basic_spec).dag.steps["vectors"].made_by() == "openvino"
    assert ov.dag.steps["vectors"].made_by() == "openvino/fp32"


@pytest.mark.parametrize(
    ("sets", "message"),
    [
        ([*TORCH, "steps.vectors.quantize=int8"], "quantize: int8 quantizes an exported model"),
        (["steps.vectors.quantize=int8", "steps.vectors.pooling=late_chunks"],
         "int8 quantizes an exported model, but backend auto runs torch here"),
        (["steps.vectors.backend=openvino", "steps.vectors.pooling=late_chunks"],
         "late chunking needs token vectors, which backend openvino does not return"),
        (["steps.vectors.backend=onnx", "steps.vectors.long_context.temperature=0.9"],
         "backend onnx: the exported model runs the model's own positions and attention"),
        (["steps.vectors.backend=openvino", "steps.vectors.device=cuda"],
         "backend openvino runs on the CPU"),
        (["steps.vectors.backend=tensorrt"], "'torch', 'openvino' or 'onnx'"),
    ],
)  # fmt: skip
def test_backend_spec_errors(basic_spec: Path, sets: list[str], message: str) -> None:
    with pytest.raises(SpecError) as info:
        dag_mod.load(basic_spec, overrides=sets, preflight=True)
    rendered = info.value.render()
    assert message in rendered and "spec.yaml" in rendered, rendered


def test_auto_is_openvino_on_a_cpu_and_torch_where_an_export_cannot_serve(
    basic_spec: Path,
) -> None:
    def made_by(*sets: str) -> str:
        return embedpipe.load(basic_spec, overrides=list(sets)).dag.steps["vectors"].made_by()

    assert made_by() == "openvino"  # the default, whatever this host has
    assert made_by("steps.vectors.device=cpu") == "openvino"
    assert made_by("steps.vectors.device=cuda") == "torch"
    assert made_by("steps.vectors.pooling=late_chunks") == "torch"
    assert made_by("steps.vectors.long_context.temperature=0.9") == "torch"
    assert made_by(*TORCH) == "torch"


def test_export_is_built_once_reused_and_serves_queries(
    basic_spec: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    over = ["steps.vectors.backend=openvino"]
    torch_run = embedpipe.load(basic_spec, overrides=TORCH)
    assert torch_run.run().status == "completed"
    torch_rows = {r["chunk_id"]: np.asarray(r["vector"])
                  for r in torch_run.sql("select chunk_id, vector from tiny")}  # fmt: skip

    fast = embedpipe.load(basic_spec, overrides=over)
    done = fast.run()
    assert done.status == "completed", done.error
    assert done.steps["vectors"].computed == len(torch_rows)  # another backend re-encodes
    assert "building the openvino model of all-MiniLM-L6-v2" in capsys.readouterr().err
    (built,) = all_artifacts(fast.workspace)
    lineage = built.lineage()
    assert lineage["backend"] == "openvino" and lineage["metrics"]["cosine_mean"] > 0.999
    assert lineage["metrics"]["sample"] == len(torch_rows)
    rows = {r["chunk_id"]: np.asarray(r["vector"])
            for r in fast.sql("select chunk_id, vector from tiny")}  # fmt: skip
    cos = [float(rows[c] @ torch_rows[c]) for c in rows]
    assert min(cos) > 0.999 and rows.keys() == torch_rows.keys()

    # batch size changes no vector: everything cached, nothing rebuilt
    again = embedpipe.load(basic_spec, overrides=[*over, "steps.vectors.batch_size=3"]).run()
    assert again.steps["vectors"].computed == 0 and again.steps["vectors"].cached == len(rows)
    assert "building" not in capsys.readouterr().err
    assert [a.id for a in all_artifacts(fast.workspace)] == [built.id]

    # a later run with work to do reuses the kept model
    extra = {"_id": "d7", "title": "Tides", "text": "The moon's gravity raises the tides."}
    with (basic_spec.parent / "corpus.jsonl").open("a") as f:
        f.write(json.dumps(extra) + "\n")
    more = embedpipe.load(basic_spec, overrides=over).run()
    assert more.steps["vectors"].computed == 1 and more.steps["vectors"].rows_in == len(rows) + 1
    assert "building" not in capsys.readouterr().err
    assert [a.id for a in all_artifacts(fast.workspace)] == [built.id]

    # queries go through the same exported model as the documents
    searcher = embedpipe.load(basic_spec, overrides=over)
    hits = searcher.search("how do bees find flowers?", 1)
    assert hits[0]["doc_id"] == "d2"
    step = searcher.dag.steps["vectors"]
    assert step.export is not None and step.export.id == built.id
    query = step.encode_queries(["how do bees find flowers?"])[0]
    assert hits[0]["score"] == pytest.approx(float(query @ rows[hits[0]["chunk_id"]]), abs=1e-4)


def test_gate_refuses_a_broken_quantization(
    basic_spec: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Per-tensor int8 of every op (onnxruntime's default) drifts far from torch's vectors: the
    gate refuses it, nothing is indexed and no model is kept."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    def broken(source: Path, target: Path) -> None:
        quantize_dynamic(str(source), str(target), weight_type=QuantType.QInt8)

    monkeypatch.setattr(backends, "quantize_onnx", broken)
    first = embedpipe.load(basic_spec, overrides=TORCH)
    assert first.run().status == "completed"
    count = "select chunk_id, vector from tiny order by chunk_id"
    before = first.sql(count)
    over = ["steps.vectors.backend=onnx", "steps.vectors.quantize=int8",
            "steps.vectors.min_cosine=0.99"]  # fmt: skip
    pipeline = embedpipe.load(basic_spec, overrides=over)
    done = pipeline.run()
    assert done.status == "failed"
    assert "below the floor min_cosine 0.99" in (done.error or "") and "onnx/int8" in done.error
    assert all_artifacts(pipeline.workspace) == []
    assert first.sql(count) == before
    with pytest.raises(QualityGateError, match="cosine"):
        backends.gate("onnx/int8", 0.94, 0.88, 0.99, 6, "steps.vectors")


@pytest.mark.slow  # CI stays under 20 minutes; `make test-slow` runs it
def test_a_raised_floor_refuses_a_kept_model(
    basic_spec: Path, write_spec: Callable[..., Path]
) -> None:
    over = ["steps.vectors.backend=onnx", "steps.vectors.quantize=int8"]
    done = embedpipe.load(basic_spec, overrides=over).run()
    assert done.status == "completed", done.error
    (built,) = all_artifacts(embedpipe.load(basic_spec).workspace)
    assert built.lineage()["made_by"] == "onnx/int8"
    mean = built.lineage()["metrics"]["cosine_mean"]
    assert 0.98 < mean < 1.0
    strict = embedpipe.load(basic_spec, overrides=[*over, "steps.vectors.min_cosine=0.99999"])
    with pytest.raises(QualityGateError, match=r"below the floor min_cosine 0\.99999.*built"):
        strict.search("bees", 1)
    # a run that loads it is refused too (it has a new document to encode)
    extra = {"_id": "d7", "title": "Tides", "text": "The moon's gravity raises the tides."}
    with (basic_spec.parent / "corpus.jsonl").open("a") as f:
        f.write(json.dumps(extra) + "\n")
    refused = strict.run()
    assert refused.status == "failed" and "min_cosine 0.99999" in (refused.error or "")


def test_openvino_sends_no_telemetry() -> None:
    """OpenVINO's converter and NNCF would send usage telemetry unless a consent file says no;
    with DO_NOT_TRACK=1 (embedpipe's default) the consent check declines, so nothing is sent
    (and no process is forked beside Lance to send it)."""
    from openvino_telemetry import Telemetry

    from embedpipe import _env

    _env.apply()  # conftest applied it already; apply() is safe to call again
    t = Telemetry(tid="G-TEST", app_name="embedpipe-test", app_version="0", backend="ga4",
                  enable_opt_in_dialog=False)  # fmt: skip
    assert t.consent is False
