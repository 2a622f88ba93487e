"""Fast CPU backends for the encode step: the sentence-transformers model exported to OpenVINO
or ONNX Runtime, optionally quantized to int8, with a quality gate against torch.

An export is the whole sentence-transformers module (transformer, pooling, the modules after
it) traced once with dynamic batch and sequence axes, so it pools as ``model.encode`` does.
``openvino.convert_model`` and ``torch.onnx.export`` are used directly: the optimum wrappers
(``sentence-transformers[onnx]``, ``optimum-intel``) pin transformers below the version the
project runs (docs/stack.md).

- openvino: runs in the CPU's default inference precision (bf16 on a CPU with AVX512-BF16 or
  AMX, else fp32) or fp32 on request; int8 is NNCF post-training quantization calibrated on a
  sample of the corpus.
- onnx: ONNX Runtime in fp32; int8 is dynamic quantization of the MatMul weights, per channel.

Every build is checked: the exported model and torch encode the same sample, and the cosine
between their vectors (mean, min) is recorded with the artifact; below the floor the build is
refused (:class:`~embedpipe.errors.QualityGateError`) and nothing is kept.
"""

from __future__ import annotations

import contextlib
import functools
import importlib.util
import io
import os
import shutil
import tempfile
import threading
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from embedpipe import _env
from embedpipe.errors import ArtifactError, QualityGateError

BACKENDS = ("torch", "openvino", "onnx")
FAST = ("openvino", "onnx")
# What each fast backend needs installed (the import name, the package to pip install).
PACKAGES = {"openvino": (("openvino", "openvino"), ("nncf", "nncf")),
            "onnx": (("onnxruntime", "onnxruntime"), ("onnx", "onnx"))}  # fmt: skip
FILES = {"openvino": ("model.xml", "model.bin"), "onnx": ("model.onnx",)}
GATE_SAMPLE = 256  # texts encoded by both the export and torch when an export is built
CALIBRATION = 300  # texts NNCF calibrates an int8 OpenVINO model on (the first of the sample)

Batch = tuple[np.ndarray, np.ndarray]  # int64 input ids and attention mask, padded
# An exported model: batches in, one array of vectors per batch out, in order.
Runner = Callable[[Sequence[Batch]], list[np.ndarray]]


def missing(backend: str) -> str | None:
    """What to install for ``backend``, or None when it is ready."""
    needed = PACKAGES.get(backend, ())
    absent = [pkg for mod, pkg in needed if importlib.util.find_spec(mod) is None]
    if not absent:
        return None
    return f"backend {backend} needs {' and '.join(absent)}: pip install {' '.join(absent)}"


@functools.cache
def cpu_precision() -> str:
    """The precision OpenVINO runs in on this CPU by default: bf16 where the CPU has it."""
    import openvino as ov

    hint = str(ov.Core().get_property("CPU", "INFERENCE_PRECISION_HINT")).lower()
    return "bf16" if "bf" in hint else "fp16" if "16" in hint else "fp32"


def precision_of(backend: str, requested: str) -> str:
    """The precision ``backend`` runs in for the ``precision`` setting (auto | fp32)."""
    if backend == "openvino" and requested == "auto":
        return cpu_precision()
    return "fp32"


def label(backend: str, precision: str, quantize: str) -> str:
    """``openvino``, ``openvino/fp32``, ``onnx/int8``, ...: what makes a step's vectors, from
    its settings (``precision`` as set: auto or fp32), never from the machine, so that every
    host computes the same cache fingerprint and finds the same export. It enters the encode
    step's fingerprint: each backend's vectors differ a little."""
    if quantize == "int8":
        return f"{backend}/int8"
    return f"{backend}/fp32" if precision == "fp32" and backend == "openvino" else backend


class _Pooled:
    """The sentence-transformers model as one traceable module: ids and mask in, the pooled
    sentence embedding out (what ``model.encode`` returns before its own normalisation)."""

    def __new__(cls, model: Any) -> Any:
        import torch

        class Pooled(torch.nn.Module):
            def __init__(self, st: Any) -> None:
                super().__init__()
                self.st = st

            def forward(self, input_ids: Any, attention_mask: Any) -> Any:
                features = {"input_ids": input_ids, "attention_mask": attention_mask}
                return self.st(features)["sentence_embedding"]

        return Pooled(model).eval()


def _example(model: Any) -> tuple[Any, Any]:
    tok = model.tokenizer(["an example input", "and a second, somewhat longer one"],
                          padding=True, return_tensors="pt")  # fmt: skip
    return tok["input_ids"], tok["attention_mask"]


def _quiet() -> contextlib.ExitStack:
    """Tracing prints TracerWarnings and exporter chatter that mean nothing to a user."""
    stack = contextlib.ExitStack()
    stack.enter_context(warnings.catch_warnings())
    warnings.simplefilter("ignore")
    stack.enter_context(contextlib.redirect_stdout(io.StringIO()))
    return stack


def shared_root() -> Path:
    """Where plain (not quantized) exports are kept for every workspace of this user:
    ``$EMBEDPIPE_HOME/exports`` (default ``~/.embedpipe/exports``)."""
    return _env.home() / "exports"


def export(
    model: Any,
    backend: str,
    quantize: str,
    folder: Path,
    sample: Sequence[str],
    shared: str | None = None,
) -> None:
    """Export ``model`` for ``backend`` into ``folder`` (int8-quantized when ``quantize`` is
    int8, calibrated on ``sample`` where the method needs data). A plain export depends only
    on the model and the backend: with ``shared`` (a key naming them), it is made once per
    machine under :func:`shared_root` and linked into ``folder``."""
    if shared and quantize == "none":
        with contextlib.suppress(OSError):
            source = _shared_export(model, backend, shared)
            for name in FILES[backend]:
                _link(source / name, folder / name)
            return
    _export(model, backend, quantize, folder, sample)


def _shared_export(model: Any, backend: str, key: str) -> Path:
    target = shared_root() / key
    if not all((target / name).is_file() for name in FILES[backend]):
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=".tmp-", dir=target.parent))
        try:
            _export(model, backend, "none", tmp, [])
            for name in FILES[backend]:  # durable before the rename publishes it
                with open(tmp / name, "rb") as f:
                    os.fsync(f.fileno())
            try:
                os.rename(tmp, target)
            except OSError:  # another process made it meanwhile
                if not target.is_dir():
                    raise
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return target


def _link(source: Path, target: Path) -> None:
    try:
        os.link(source, target)
    except OSError:  # another file system
        shutil.copyfile(source, target)


def _export(model: Any, backend: str, quantize: str, folder: Path, sample: Sequence[str]) -> None:
    import torch

    folder.mkdir(parents=True, exist_ok=True)
    pooled = _Pooled(model)
    ids, mask = _example(model)
    with _quiet(), torch.inference_mode():
        if backend == "openvino":
            _export_openvino(model, pooled, ids, mask, quantize, folder, sample)
        elif backend == "onnx":
            _export_onnx(pooled, ids, mask, quantize, folder)
        else:
            raise ValueError(f"no export for backend {backend!r}; one of {', '.join(FAST)}")


def _export_openvino(model: Any, pooled: Any, ids: Any, mask: Any, quantize: str,
                     folder: Path, sample: Sequence[str]) -> None:  # fmt: skip
    import openvino as ov

    inputs = [("input_ids", [-1, -1], ov.Type.i64), ("attention_mask", [-1, -1], ov.Type.i64)]
    converted = ov.convert_model(pooled, example_input=(ids, mask), input=inputs)
    if quantize == "int8":
        converted = quantize_openvino(model, converted, sample)
    ov.save_model(converted, folder / "model.xml", compress_to_fp16=False)


def quantize_openvino(model: Any, converted: Any, sample: Sequence[str]) -> Any:
    """NNCF post-training int8 quantization, calibrated on batches of ``sample``."""
    import nncf

    texts = list(sample[:CALIBRATION])
    if not texts:
        raise ArtifactError("int8 quantization needs texts to calibrate on; none were given")
    batches = [_tokens(model, texts[i : i + 32]) for i in range(0, len(texts), 32)]
    with _nncf_quiet():
        return nncf.quantize(
            converted,
            nncf.Dataset(batches),
            model_type=nncf.ModelType.TRANSFORMER,
            subset_size=len(batches) * 32,
        )


@contextlib.contextmanager
def _nncf_quiet() -> Any:
    """NNCF draws its own progress bars and logs at INFO; the encode step reports instead."""
    import logging

    log = logging.getLogger("nncf")
    level = log.level
    log.setLevel(logging.WARNING)
    try:
        with contextlib.redirect_stderr(io.StringIO()):
            yield
    finally:
        log.setLevel(level)


def _export_onnx(pooled: Any, ids: Any, mask: Any, quantize: str, folder: Path) -> None:
    import torch

    plain = folder / ("model.fp32.onnx" if quantize == "int8" else "model.onnx")
    torch.onnx.export(
        pooled,
        (ids, mask),
        str(plain),
        input_names=["input_ids", "attention_mask"],
        output_names=["embedding"],
        dynamic_axes={"input_ids": {0: "batch", 1: "tokens"},
                      "attention_mask": {0: "batch", 1: "tokens"}, "embedding": {0: "batch"}},
        opset_version=17,
        dynamo=False,  # the TorchScript exporter: no onnxscript dependency, dynamic axes as asked
    )  # fmt: skip
    if quantize == "int8":
        quantize_onnx(plain, folder / "model.onnx")
        plain.unlink()


def quantize_onnx(source: Path, target: Path) -> None:
    """Dynamic int8 quantization of the MatMul weights, per channel (the default per-tensor
    quantization of every op drifts to cosine ~0.94: docs/stack.md)."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    quantize_dynamic(str(source), str(target), per_channel=True,
                     op_types_to_quantize=["MatMul"], weight_type=QuantType.QInt8)  # fmt: skip


def load(folder: Path, backend: str, precision: str) -> Runner:
    """A runner over an export in ``folder``: ``(input_ids, attention_mask) -> vectors``."""
    for name in FILES[backend]:
        if not (folder / name).is_file():
            raise ArtifactError(f"exported model {folder} lacks {name}; remove the folder and "
                                "run the pipeline to build it again")  # fmt: skip
    if backend == "openvino":
        return _openvino_runner(folder, precision)
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(str(folder / "model.onnx"), options,
                                   providers=["CPUExecutionProvider"])  # fmt: skip

    def run_onnx(batches: Sequence[Batch]) -> list[np.ndarray]:
        return [
            np.asarray(session.run(None, {"input_ids": i, "attention_mask": m})[0], np.float32)
            for i, m in batches
        ]

    return run_onnx


def _openvino_runner(folder: Path, precision: str) -> Runner:
    """Batches run as asynchronous requests over the CPU's streams (OpenVINO's THROUGHPUT
    hint: on 2 cores, two single-thread streams each take a batch), which measured 20-40%
    faster than one two-thread request at a time (bench/RESULTS.md)."""
    import openvino as ov

    config = {"PERFORMANCE_HINT": "THROUGHPUT"}
    threads = os.environ.get("OMP_NUM_THREADS", "")
    if threads.isdigit() and int(threads) > 0:  # a limit torch honours too (a Ray worker's CPUs)
        config["INFERENCE_NUM_THREADS"] = threads
    if precision == "fp32":
        config["INFERENCE_PRECISION_HINT"] = "f32"
    compiled = ov.Core().compile_model(str(folder / "model.xml"), "CPU", config)
    queue = ov.AsyncInferQueue(compiled)
    lock = threading.Lock()  # one queue: searches from several threads take turns

    def run_openvino(batches: Sequence[Batch]) -> list[np.ndarray]:
        out: list[np.ndarray | None] = [None] * len(batches)

        def done(request: Any, k: int) -> None:
            out[k] = np.array(request.get_output_tensor(0).data, dtype=np.float32)

        with lock:
            queue.set_callback(done)
            for k, (ids, mask) in enumerate(batches):
                queue.start_async([ids, mask], userdata=k)
            queue.wait_all()
        return out  # type: ignore[return-value]

    return run_openvino


def versions(backend: str) -> dict[str, str]:
    """The versions of the packages that built an export (its lineage)."""
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for _, pkg in (*PACKAGES.get(backend, ()), ("torch", "torch")):
        with contextlib.suppress(PackageNotFoundError):
            out[pkg] = version(pkg)
    return out


def _tokens(model: Any, texts: Sequence[str]) -> Batch:
    """Padded int64 ids and mask, truncated to the model's window as ``model.encode`` does."""
    tok = model.tokenizer(list(texts), padding=True, truncation=True,
                          max_length=int(model.max_seq_length), return_tensors="np")  # fmt: skip
    return tok["input_ids"].astype(np.int64), tok["attention_mask"].astype(np.int64)


def _padded(rows: Sequence[Sequence[int]], pad: int) -> Batch:
    width = max((len(r) for r in rows), default=0)
    ids = np.full((len(rows), width), pad, np.int64)
    mask = np.zeros((len(rows), width), np.int64)
    for k, r in enumerate(rows):
        ids[k, : len(r)] = r
        mask[k, : len(r)] = 1
    return ids, mask


def encode(
    model: Any,
    run: Runner,
    texts: Sequence[str],
    *,
    batch_size: int,
    prompt: str | None = None,
    normalize: bool = True,
) -> np.ndarray:
    """``model.encode`` through an exported runner: the prompt prepended, texts tokenized
    once and batched in order of length (least padding), vectors in the texts' order,
    L2-normalised if asked."""
    if not texts:
        return np.zeros((0, _dims(model)), np.float32)
    inputs = [f"{prompt}{t}" for t in texts] if prompt else list(texts)
    tokenizer = model.tokenizer
    ids = tokenizer(inputs, truncation=True, max_length=int(model.max_seq_length))["input_ids"]
    order = np.argsort([-len(x) for x in ids], kind="stable")
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    groups = [order[b : b + batch_size] for b in range(0, len(order), batch_size)]
    found = run([_padded([ids[i] for i in rows], pad) for rows in groups])
    out = np.zeros((len(inputs), _dims(model)), np.float32)
    for rows, vectors in zip(groups, found, strict=True):
        out[rows] = vectors
    if normalize:
        out /= np.clip(np.linalg.norm(out, axis=1, keepdims=True), 1e-12, None)
    return out


def _dims(model: Any) -> int:
    dim_of = getattr(model, "get_embedding_dimension", None)
    return int((dim_of or model.get_sentence_embedding_dimension)())


def agreement(reference: np.ndarray, vectors: np.ndarray) -> tuple[float, float]:
    """Cosine between each pair of rows: (mean, min)."""
    a = reference / np.clip(np.linalg.norm(reference, axis=1, keepdims=True), 1e-12, None)
    b = vectors / np.clip(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12, None)
    cos = (a * b).sum(axis=1)
    return float(cos.mean()), float(cos.min())


def gate(
    built: str, mean: float, low: float, floor: float, sample: int, where: str, kept: bool = False
) -> None:
    """Refuse an export whose vectors stray from torch's: mean cosine below ``floor``."""
    if mean >= floor:
        return
    figures = (
        f"the {built} model's vectors agree with torch's at cosine {mean:.4f} mean, "
        f"{low:.4f} min over {sample} texts, below the floor min_cosine {floor}"
    )
    if kept:
        raise QualityGateError(
            f"{where}: {figures} (measured when it was built, under a lower floor); rows "
            "already encoded with it stay until re-encoded. Set backend: torch, quantize: none "
            "or another backend to re-encode, or lower min_cosine"
        )
    raise QualityGateError(
        f"{where}: {figures}; nothing was indexed with it. Use quantize: none, another "
        "backend, or (knowing the cost) a lower min_cosine"
    )
