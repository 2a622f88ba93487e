"""Long-context helpers for sentence-transformers encoders: model surgery and pooling.

Pure functions over a loaded ``SentenceTransformer`` (or its Hugging Face model); no pipeline
code. See PAPERS.md "encode · TempScale" and "encode · LongEmbed".

- :func:`extend_positions`: LongEmbed's training-free position extension for absolute-position
  (BERT-like) models: linear interpolation (PI), grouped (GP) or recurrent (RP) positions.
- :func:`uses_rope` / :func:`apply_ntk`: NTK-aware RoPE base scaling for rotary models.
- :func:`set_temperature`: TempScale, one attention temperature for every self-attention layer.
- :func:`attention_scaling`: LongEmbed's inference attention scaling, per row of a batch.
- :func:`token_spans`, :func:`late_chunk_vectors`, :func:`late_chunk_many`: late chunking, one
  long forward pass per document (overlapping macro windows past the window size), then a mean
  of each chunk's token embeddings.
- :func:`reset`: undo all of the above on a model.

Everything is reversible and idempotent: each function keeps the model's original tensors and
values, so calling one twice never compounds and the neutral setting (tau = 1, scaling off,
``max_tokens`` <= the trained length, NTK factor 1) gives back bit-identical embeddings.

torch is imported inside the functions, so importing this module stays cheap.
"""

from __future__ import annotations

import bisect
import copy
import itertools
import math
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    import torch
    from sentence_transformers import SentenceTransformer
    from torch import nn

Span = tuple[int, int]

METHODS = ("linear", "grouped", "recurrent")

# Attributes this module sets on the models it changes (the originals it restores from).
_POS_ORIG = "_longctx_positions"
_SCALING_ORIG = "_longctx_scaling"
_ATTN_HOOKS = "_longctx_attention_hooks"
_NTK_ORIG = "_longctx_ntk"


# --------------------------------------------------------------------------------------------
# Finding the Hugging Face model and its parts


def _hf_model(model: Any) -> nn.Module:
    """The Hugging Face model inside a SentenceTransformer (``model[0].auto_model``), or
    ``model`` itself when it already is one."""
    import torch

    if isinstance(model, torch.nn.Sequential):
        hf = getattr(model[0], "auto_model", None) if len(model) else None
        if hf is None:
            raise ValueError(
                f"{type(model).__name__}: its first module "
                f"({type(model[0]).__name__ if len(model) else 'none'}) has no Hugging Face "
                "model (auto_model)"
            )
        return hf
    if isinstance(model, torch.nn.Module) and hasattr(model, "config"):
        return model
    raise ValueError(f"{type(model).__name__} is neither a SentenceTransformer nor a HF model")


def _position_table(hf: nn.Module) -> tuple[nn.Module, nn.Embedding, int]:
    """``(embeddings module, its absolute position table, offset)``; offset is the number of
    table rows before position 0 (RoBERTa-style models start positions at padding_idx + 1)."""
    import torch

    embeddings = getattr(hf, "embeddings", None)
    table = getattr(embeddings, "position_embeddings", None)
    if embeddings is None or not isinstance(table, torch.nn.Embedding):
        raise ValueError(
            f"{type(hf).__name__} has no absolute position table (embeddings."
            "position_embeddings): position extension applies to BERT-like models only; "
            "for a RoPE model use apply_ntk"
        )
    padding_idx = getattr(embeddings, "padding_idx", None)
    offset = padding_idx + 1 if isinstance(padding_idx, int) else 0
    return embeddings, table, offset


def _self_attentions(hf: nn.Module) -> list[nn.Module]:
    """Every self-attention module: the ones with a float ``scaling`` (transformers 5)."""
    found = []
    for module in hf.modules():
        if "cross" in type(module).__name__.lower():
            continue
        if isinstance(getattr(module, "scaling", None), float):
            found.append(module)
    return found


# --------------------------------------------------------------------------------------------
# LongEmbed: position extension for absolute-position models


def extend_positions(model: SentenceTransformer, max_tokens: int, method: str) -> None:
    """Extend an absolute-position (BERT-like) model to ``max_tokens`` tokens, training-free.

    ``max_tokens`` counts every token of a sequence, [CLS] and [SEP] included, exactly as
    sentence-transformers' ``max_seq_length`` (and the tokenizer's ``max_length``) count them;
    so the new table has ``max_tokens`` position rows (plus the rows before position 0 that
    RoBERTa-style tables keep, copied unchanged). With L_o trained positions (512) and
    L_t = max_tokens, s = ceil(L_t / L_o), position p gets:

    - ``linear`` (PI): the learned vectors linearly interpolated at p / s; positions past the
      last learned vector (p / s > L_o - 1) continue the line of the last interval
      (L_o - 2 -> L_o - 1). Rows p * s equal the original rows p exactly.
    - ``grouped`` (GP): the learned vector floor(p / s).
    - ``recurrent`` (RP): the learned vector p mod L_o.

    The table is always built from the original one (kept on the model), so a second call
    replaces the first. ``max_tokens`` <= L_o changes nothing on an unextended model and
    restores the original table (and ``max_seq_length``) on an extended one. Otherwise this
    grows the ``position_ids`` / ``token_type_ids`` buffers and
    ``config.max_position_embeddings`` and sets ``model.max_seq_length = max_tokens`` (the
    tokenizer's ``model_max_length``), so inputs are truncated at ``max_tokens``.

    Note that every length moves, short texts too (queries and documents must share the
    extended encoder). Raises ValueError for an unknown method or a model without an
    absolute position table (RoPE models: see :func:`apply_ntk`).
    """
    import torch

    if method not in METHODS:
        raise ValueError(f"unknown position extension method {method!r}; use one of {METHODS}")
    if max_tokens < 1:
        raise ValueError(f"max_tokens must be positive, got {max_tokens}")
    hf = _hf_model(model)
    embeddings, table, offset = _position_table(hf)
    saved = getattr(embeddings, _POS_ORIG, None)
    original: torch.Tensor = saved["weight"] if saved else table.weight.detach()
    trained = original.shape[0] - offset  # L_o
    if max_tokens <= trained:
        if saved:
            _restore_positions(model, hf, embeddings, saved)
        return
    if saved is None:
        saved = {
            "weight": original.clone(),
            "config": getattr(hf.config, "max_position_embeddings", None),
            "buffers": {
                name: getattr(embeddings, name).clone()
                for name in ("position_ids", "token_type_ids")
                if isinstance(getattr(embeddings, name, None), torch.Tensor)
            },
            "max_seq_length": getattr(model, "max_seq_length", None),
        }
        setattr(embeddings, _POS_ORIG, saved)

    learned = original[offset:]
    s = math.ceil(max_tokens / trained)
    p = torch.arange(max_tokens, device=learned.device)
    if method == "linear":
        if trained < 2:
            raise ValueError("linear interpolation needs at least 2 learned positions")
        where = p.double() / s
        lo = where.floor().long().clamp(max=trained - 2)
        w = (where - lo.double()).to(learned.dtype).unsqueeze(1)
        rows = (1 - w) * learned[lo] + w * learned[lo + 1]
    elif method == "grouped":
        rows = learned[torch.div(p, s, rounding_mode="floor")]
    else:
        rows = learned[p % trained]
    weight = torch.cat([original[:offset], rows]).to(table.weight.dtype)

    new_table = torch.nn.Embedding(
        weight.shape[0], weight.shape[1], device=table.weight.device, dtype=table.weight.dtype
    )
    with torch.no_grad():
        new_table.weight.copy_(weight)
    new_table.weight.requires_grad_(table.weight.requires_grad)
    embeddings.position_embeddings = new_table
    total = weight.shape[0]
    for name, buffer in saved["buffers"].items():
        if name == "position_ids":
            grown = torch.arange(total, dtype=buffer.dtype, device=buffer.device).expand(1, -1)
        else:
            grown = torch.zeros((1, total), dtype=buffer.dtype, device=buffer.device)
        setattr(embeddings, name, grown)
    hf.config.max_position_embeddings = total
    if hasattr(model, "max_seq_length"):
        model.max_seq_length = max_tokens


def _restore_positions(model: Any, hf: nn.Module, embeddings: nn.Module, saved: dict) -> None:
    import torch

    old = embeddings.position_embeddings
    table = torch.nn.Embedding(
        saved["weight"].shape[0],
        saved["weight"].shape[1],
        device=old.weight.device,
        dtype=old.weight.dtype,
    )
    with torch.no_grad():
        table.weight.copy_(saved["weight"])
    table.weight.requires_grad_(old.weight.requires_grad)
    embeddings.position_embeddings = table
    for name, buffer in saved["buffers"].items():
        setattr(embeddings, name, buffer.clone())
    if saved["config"] is not None:
        hf.config.max_position_embeddings = saved["config"]
    if hasattr(model, "max_seq_length") and saved["max_seq_length"] is not None:
        model.max_seq_length = saved["max_seq_length"]
    delattr(embeddings, _POS_ORIG)


# --------------------------------------------------------------------------------------------
# RoPE: NTK-aware base scaling


def _rope_values(config: Any) -> bool:
    params = getattr(config, "rope_parameters", None)
    if isinstance(params, dict) and params:
        return True
    return any(getattr(config, key, None) is not None for key in ("rope_theta", "rope_scaling"))


def uses_rope(model: SentenceTransformer) -> bool:
    """Whether the model encodes positions with RoPE: its config has rope_theta /
    rope_scaling / rope_parameters or position_embedding_type "rotary", or it has no absolute
    position table and some module is a rotary embedding (an ALiBi or relative-bias model
    without a position table is not RoPE)."""
    hf = _hf_model(model)
    config = hf.config
    if _rope_values(config) or getattr(config, "position_embedding_type", None) == "rotary":
        return True
    try:
        _position_table(hf)
    except ValueError:
        return any(
            "rotary" in type(m).__name__.lower() or _inv_freq_buffers(m) for m in hf.modules()
        )
    return False


def _inv_freq_buffers(module: nn.Module) -> list[str]:
    return [n for n, _ in module.named_buffers(recurse=False) if n.endswith("inv_freq")]


def _scale_theta(params: Any, factor: float) -> Any:
    """A copy of a rope_parameters value with every rope_theta multiplied by ``factor``."""
    if isinstance(params, dict):
        return {
            k: (v * factor if k == "rope_theta" and v is not None else _scale_theta(v, factor))
            for k, v in params.items()
        }
    return params


def apply_ntk(model: SentenceTransformer, factor: float) -> None:
    """NTK-aware RoPE scaling: the rotary base theta becomes theta * factor (LongEmbed's
    lambda, e.g. 3 / 5 / 10 for s = 2 / 4 / 8), so frequency j becomes
    (theta * factor) ** (-2j / d).

    Updates the HF config (``rope_parameters[...]["rope_theta"]``, or ``rope_theta``) and, since
    a loaded model computed its rotary frequencies at init, also every ``*inv_freq`` buffer
    (frequency j times factor ** (-2j / d)). Always relative to the original values (kept on
    the model): a second call replaces the first, factor 1 restores. Raises ValueError for a
    model that does not use RoPE, naming its class.
    """
    import torch

    hf = _hf_model(model)
    if not uses_rope(model):
        raise ValueError(
            f"{type(hf).__name__} does not use rotary position embeddings (RoPE); NTK scaling "
            "does not apply (for absolute positions use extend_positions)"
        )
    if not factor > 0:
        raise ValueError(f"NTK factor must be positive, got {factor}")
    config = hf.config
    saved = getattr(hf, _NTK_ORIG, None)
    if saved is None:
        saved = {
            "rope_parameters": copy.deepcopy(getattr(config, "rope_parameters", None)),
            "rope_theta": getattr(config, "rope_theta", None),
            "buffers": {},
        }
        for path, module in hf.named_modules():
            for name in _inv_freq_buffers(module):
                saved["buffers"][(path, name)] = getattr(module, name).detach().clone()
        setattr(hf, _NTK_ORIG, saved)
    if saved["rope_parameters"] is not None:
        config.rope_parameters = _scale_theta(copy.deepcopy(saved["rope_parameters"]), factor)
    if isinstance(saved["rope_theta"], int | float):
        config.rope_theta = saved["rope_theta"] * factor
    for path, module in hf.named_modules():
        for name in _inv_freq_buffers(module):
            original = saved["buffers"].get((path, name))
            if original is None:
                continue
            half = original.shape[-1]
            exponent = torch.arange(half, dtype=torch.float64, device=original.device) / half
            scale = (float(factor) ** -exponent).to(original.dtype)
            setattr(module, name, original * scale if factor != 1 else original.clone())


# --------------------------------------------------------------------------------------------
# TempScale


def set_temperature(model: SentenceTransformer, tau: float) -> None:
    """TempScale: every self-attention computes softmax(Q K^T / (sqrt(d_h) * tau) + M), i.e.
    its ``scaling`` becomes ``head_size ** -0.5 / tau`` (the original scaling over tau).

    The original scaling is kept on each module, so calling twice does not compound and
    tau = 1.0 restores bit-identical output. Works with the eager, sdpa and flash attention
    functions, which all take the module's ``scaling``.
    """
    if not tau > 0:
        raise ValueError(f"temperature must be positive, got {tau}")
    hf = _hf_model(model)
    modules = _self_attentions(hf)
    if not modules:
        raise ValueError(
            f"{type(hf).__name__} has no self-attention module with a `scaling` attribute; "
            "TempScale cannot be applied"
        )
    for module in modules:
        if not hasattr(module, _SCALING_ORIG):
            setattr(module, _SCALING_ORIG, module.scaling)
        original = getattr(module, _SCALING_ORIG)
        module.scaling = original if tau == 1.0 else original / tau


# --------------------------------------------------------------------------------------------
# LongEmbed: inference attention scaling


class _LengthFactors:
    """Per-row query factors max(1, log(n) / log(trained_len)), captured before each forward."""

    def __init__(self, trained_len: int) -> None:
        self.log_trained = math.log(trained_len)
        self.factors: torch.Tensor | None = None

    def capture(self, inputs: Mapping[str, Any]) -> None:
        ids = inputs.get("input_ids")
        self.factors = length_factors(
            inputs.get("attention_mask"),
            ids if ids is not None else inputs.get("inputs_embeds"),
            inputs.get("cu_seq_lens_q"),
            self.log_trained,
        )

    def clear(self, *_: Any) -> None:
        self.factors = None

    def scale(self, module: nn.Module, args: Any, output: torch.Tensor) -> torch.Tensor:
        factors = self.factors
        if factors is None:
            raise RuntimeError(
                "attention_scaling: the attention was called without a captured attention mask "
                "(call the model through SentenceTransformer.encode or the HF model's __call__)"
            )
        batch, seq = output.shape[0], output.shape[1]
        if factors.shape[0] not in (1, batch) or factors.shape[1] not in (1, seq):
            raise RuntimeError(
                f"attention_scaling: captured factors {tuple(factors.shape)} do not fit the "
                f"query output {tuple(output.shape)}"
            )
        return output * factors.to(device=output.device, dtype=output.dtype)


def length_factors(
    attention_mask: torch.Tensor | None,
    ids: torch.Tensor | None,
    cu_seq_lens: torch.Tensor | None,
    log_trained: float,
) -> torch.Tensor:
    """Query factors max(1, log(n) / log_trained), broadcastable to a (batch, seq, hidden)
    query: (batch, 1, 1) from a 2-D attention mask (n = each row's non-pad length), (1, seq, 1)
    for flattened (unpadded) inputs with ``cu_seq_lens`` (n = each packed sequence's length),
    (1, 1, 1) from the sequence length when there is no mask."""
    import torch

    if cu_seq_lens is not None:
        lengths = cu_seq_lens[1:] - cu_seq_lens[:-1]
        per_seq = (lengths.double().clamp(min=1).log() / log_trained).clamp(min=1.0)
        return per_seq.repeat_interleave(lengths).float().view(1, -1, 1)
    if attention_mask is not None and attention_mask.dim() == 2:
        n = attention_mask.sum(dim=-1).double().clamp(min=1)
        return (n.log() / log_trained).clamp(min=1.0).float().view(-1, 1, 1)
    if ids is None:
        raise RuntimeError("attention_scaling: found neither an attention mask nor input ids")
    n = max(int(ids.shape[1]), 1)
    return torch.tensor(max(1.0, math.log(n) / log_trained)).view(1, 1, 1)


def _query_linear(attention: nn.Module) -> nn.Module | None:
    import torch

    for name in ("query", "q_proj", "q"):
        child = getattr(attention, name, None)
        if isinstance(child, torch.nn.Linear):
            return child
    return None


def attention_scaling(model: SentenceTransformer, on: bool, trained_len: int = 512) -> None:
    """LongEmbed's inference attention scaling: each row's attention queries are multiplied by
    max(1, log(n) / log(trained_len)), n that row's non-pad length (so rows up to trained_len
    tokens are untouched, bit for bit).

    Hooks, no patched classes: a forward pre-hook on the sentence-transformers Transformer
    module (which calls the HF model's ``forward`` directly) and one on the HF model (for direct
    calls) capture the attention mask and compute each row's factor; a forward hook on every
    self-attention's query projection multiplies its output by the row's factor. Works with
    padded batches of mixed lengths and with flattened (FA2 unpadded) inputs. ``on=False``
    removes the hooks; ``on=True`` twice replaces them. Not thread-safe across concurrent
    forwards of the same model.
    """
    if trained_len < 2:
        raise ValueError(f"trained_len must be at least 2, got {trained_len}")
    hf = _hf_model(model)
    for handle in getattr(hf, _ATTN_HOOKS, []):
        handle.remove()
    if hasattr(hf, _ATTN_HOOKS):
        delattr(hf, _ATTN_HOOKS)
    if not on:
        return
    queries = [q for q in map(_query_linear, _self_attentions(hf)) if q is not None]
    if not queries:
        raise ValueError(
            f"{type(hf).__name__} has no separate query projection (query / q_proj) to scale"
        )
    state = _LengthFactors(trained_len)

    def from_hf(module: nn.Module, args: tuple, kwargs: dict) -> None:
        inputs = dict(kwargs)
        for name, value in zip(("input_ids", "attention_mask"), args, strict=False):
            inputs.setdefault(name, value)
        state.capture(inputs)

    def from_st(module: nn.Module, args: tuple, kwargs: dict) -> None:
        features = args[0] if args else kwargs.get("features", {})
        state.capture(features if isinstance(features, Mapping) else {})

    handles = [
        hf.register_forward_pre_hook(from_hf, with_kwargs=True),
        hf.register_forward_hook(state.clear),
    ]
    first = model[0] if hf is not model else None
    if first is not None and first is not hf:
        handles.append(first.register_forward_pre_hook(from_st, with_kwargs=True))
        handles.append(first.register_forward_hook(state.clear))
    handles += [q.register_forward_hook(state.scale) for q in queries]
    setattr(hf, _ATTN_HOOKS, handles)


def reset(model: SentenceTransformer) -> None:
    """Undo every change this module made to ``model``: positions, temperature, attention
    scaling and NTK scaling."""
    hf = _hf_model(model)
    attention_scaling(model, False)
    if any(hasattr(m, _SCALING_ORIG) for m in hf.modules()):
        set_temperature(model, 1.0)
    try:
        embeddings, _, _ = _position_table(hf)
    except ValueError:
        embeddings = None
    saved = getattr(embeddings, _POS_ORIG, None) if embeddings is not None else None
    if saved:
        _restore_positions(model, hf, embeddings, saved)
    if hasattr(hf, _NTK_ORIG):
        apply_ntk(model, 1.0)


# --------------------------------------------------------------------------------------------
# Late chunking


def _tokenize(tokenizer: Any, text: str) -> tuple[list[int], list[Span]]:
    """Token ids and character offsets of ``text``, without special tokens or truncation."""
    kwargs = {"add_special_tokens": False, "return_offsets_mapping": True}
    try:
        enc = tokenizer(text, verbose=False, **kwargs)
    except TypeError:  # embedpipe.models.RustTokenizer takes no `verbose`
        enc = tokenizer(text, **kwargs)
    return list(enc["input_ids"]), [(int(a), int(b)) for a, b in enc["offset_mapping"]]


def _spans_to_tokens(offsets: Sequence[Span], spans: Sequence[Span]) -> list[Span]:
    starts = [a for a, _ in offsets]
    ends = [b for _, b in offsets]
    out = []
    for a, b in spans:
        first = bisect.bisect_right(ends, a)  # first token ending after a
        stop = bisect.bisect_left(starts, b)  # first token starting at or after b
        out.append((first, stop) if stop > first and b > a else (first, first))
    return out


def token_spans(
    tokenizer: Any, text: str, spans: Sequence[Span], max_tokens: int | None = None
) -> list[Span]:
    """Map character spans of ``text`` to token ranges ``(start, end)``, end exclusive, over
    the text's tokens without special tokens (token 0 is the first token of the text).

    A token belongs to a span when their character ranges overlap (so a token straddling two
    spans belongs to both). A span with no token (empty, whitespace only, or past the end)
    gives an empty range ``(i, i)``, i the first token after it. ``max_tokens`` truncates the
    text to its first ``max_tokens`` tokens first (None: no truncation). Needs a fast
    tokenizer (``return_offsets_mapping``).
    """
    _, offsets = _tokenize(tokenizer, text)
    if max_tokens is not None:
        offsets = offsets[:max_tokens]
    return _spans_to_tokens(offsets, spans)


def _nearest_token(offsets: Sequence[Span], span: Span) -> int:
    """The token closest in characters to ``span`` (the later one on a tie)."""
    a, b = span
    i = bisect.bisect_right([e for _, e in offsets], a)
    best, best_dist = len(offsets) - 1, math.inf
    for t in (i - 1, i):
        if 0 <= t < len(offsets):
            start, end = offsets[t]
            dist = max(start - b, a - end, 0)
            if dist <= best_dist:
                best, best_dist = t, dist
    return best


def macro_windows(n_tokens: int, content: int, overlap: int) -> list[tuple[int, int, int]]:
    """Macro windows over ``n_tokens`` tokens: ``(start, own_start, own_end)`` per window of
    ``content`` tokens (the last one ends at the text's end), consecutive windows overlapping
    by at least ``overlap`` tokens. Stitching rule: each token is taken from the window where it
    is farthest from an inner edge, i.e. the overlap of two windows is split at its middle;
    window k owns tokens ``[own_start, own_end)``, and the owned ranges tile the text."""
    if n_tokens <= content:
        return [(0, 0, n_tokens)]
    stride = content - overlap
    starts = [*range(0, n_tokens - content, stride), n_tokens - content]
    bounds = [0]
    for prev, cur in itertools.pairwise(starts):
        bounds.append((cur + prev + content) // 2)  # middle of the overlap [cur, prev + content)
    bounds.append(n_tokens)
    return [(s, bounds[k], bounds[k + 1]) for k, s in enumerate(starts)]


def _special_frame(tokenizer: Any) -> tuple[list[int], list[int]]:
    """The special tokens the tokenizer puts before and after one sequence ([CLS] / [SEP])."""
    marker = "hello"
    bare = list(tokenizer(marker, add_special_tokens=False)["input_ids"])
    full = list(tokenizer(marker, add_special_tokens=True)["input_ids"])
    for lead in range(len(full) - len(bare) + 1):
        if full[lead : lead + len(bare)] == bare:
            return full[:lead], full[lead + len(bare) :]
    raise ValueError(f"cannot find where {type(tokenizer).__name__} puts a sequence's tokens")


def _post_pooling_modules(model: Any) -> list[nn.Module]:
    """sentence-transformers modules after Pooling (Dense, Normalize, ...), applied to the
    pooled chunk vectors as encode() would."""
    import torch

    if not isinstance(model, torch.nn.Sequential):
        return []
    names = [type(m).__name__ for m in model]
    if "Pooling" not in names:
        return []
    return list(model)[names.index("Pooling") + 1 :]


def late_chunk_vectors(
    model: SentenceTransformer,
    text: str,
    spans: Sequence[Span],
    max_tokens: int,
    window: int | None = None,
    overlap: int | None = None,
    normalize: bool = True,
    batch_size: int = 8,
    prompt: str | None = None,
    shared: Span | None = None,
) -> np.ndarray:
    """Late chunking for one document: ``(len(spans), dims)`` float32 chunk vectors.

    See :func:`late_chunk_many`, which this calls with one document.
    """
    return late_chunk_many(
        model,
        [(text, spans)],
        max_tokens,
        window=window,
        overlap=overlap,
        normalize=normalize,
        batch_size=batch_size,
        prompt=prompt,
        shared=[shared],
    )[0]


def late_chunk_many(
    model: SentenceTransformer,
    docs: Sequence[tuple[str, Sequence[Span]]],
    max_tokens: int,
    window: int | None = None,
    overlap: int | None = None,
    normalize: bool = True,
    batch_size: int = 8,
    prompt: str | None = None,
    shared: Sequence[Span | None] | None = None,
) -> list[np.ndarray]:
    """Late chunking (arXiv 2409.04701) for many documents: per document, one
    ``(len(spans), dims)`` float32 array of chunk vectors, spans being character ranges.

    Each document is encoded whole (never truncated): one forward pass when its tokens fit in
    a window, else overlapping macro windows whose token embeddings are stitched (each token
    taken from the window where it is farthest from an inner edge, see :func:`macro_windows`).
    A chunk's vector is the mean of its tokens' embeddings ([CLS] / [SEP] and the prompt
    excluded), passed through the modules after Pooling (e.g. Dense) and L2-normalised when
    ``normalize``. A span with no token (empty, whitespace only) gets the embedding of the
    token nearest to it; a document with no token at all gets, for every span, the mean of
    its specials-only window. Never NaN.

    ``max_tokens``: the most tokens one forward pass may hold, specials included (the model's
    position capacity: 512, or what :func:`extend_positions` extended it to). ``window``:
    tokens per macro window, specials included (default ``max_tokens``; at most that).
    ``overlap``: tokens shared by consecutive windows (default: a quarter of a window's text
    tokens, 127 for a 512-token BERT window). ``prompt``: a document prompt (e.g.
    "passage: ") repeated at the head of every window and not pooled. Windows from all
    documents are sorted by length and run ``batch_size`` at a time, so memory stays bounded
    by ``batch_size`` x ``window`` tokens.

    ``shared``: per document, a character span pooled into every chunk's vector besides the
    chunk's own tokens (its title, which plain chunking prepends to every chunk), or None.
    """
    import torch

    hf = _hf_model(model)
    tokenizer = model.tokenizer
    window = window or max_tokens
    if window > max_tokens:
        raise ValueError(f"window ({window}) exceeds max_tokens ({max_tokens})")
    try:
        _, table, offset = _position_table(hf)
        capacity = table.num_embeddings - offset
    except ValueError:
        capacity = None
    if capacity is not None and window > capacity:
        raise ValueError(
            f"window of {window} tokens exceeds the {capacity} positions of "
            f"{type(hf).__name__}; call extend_positions(model, {window}, ...) first"
        )
    lead, trail = _special_frame(tokenizer)
    prompt_ids = list(tokenizer(prompt, add_special_tokens=False)["input_ids"]) if prompt else []
    head = lead + prompt_ids
    content = window - len(head) - len(trail)
    if content < 1:
        raise ValueError(f"window of {window} tokens leaves no room for text after specials")
    if overlap is None:
        overlap = content // 4
    if not 0 <= overlap < content:
        raise ValueError(f"overlap must be in [0, {content}) for this window, got {overlap}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    device = next(hf.parameters()).device

    tokenized = [_tokenize(tokenizer, text) for text, _ in docs]
    jobs = []  # (doc index, window start, own start, own end, input ids)
    for d, (ids, _) in enumerate(tokenized):
        for start, own_start, own_end in macro_windows(len(ids), content, overlap):
            piece = ids[start : start + content]
            jobs.append((d, start, own_start, own_end, head + piece + trail))
    jobs.sort(key=lambda job: -len(job[4]))

    hidden = None
    tokens: list[torch.Tensor | None] = [None] * len(docs)
    fallback: list[torch.Tensor | None] = [None] * len(docs)
    with torch.inference_mode():
        for b in range(0, len(jobs), batch_size):
            batch = jobs[b : b + batch_size]
            states = _token_states(hf, [job[4] for job in batch], pad_id, device)
            hidden = states.shape[-1]
            for row, (d, start, own_start, own_end, seq) in enumerate(batch):
                n = len(tokenized[d][0])
                if tokens[d] is None:
                    tokens[d] = torch.zeros((n, hidden))
                if n == 0:
                    fallback[d] = states[row, : len(seq)].mean(dim=0)
                    continue
                first = len(head) + own_start - start
                tokens[d][own_start:own_end] = states[row, first : first + own_end - own_start]

    per_doc: list[list[Any]] = []
    for d, (_, spans) in enumerate(docs):
        ids, offsets = tokenized[d]
        emb = tokens[d]
        common = shared[d] if shared else None
        a, b = _spans_to_tokens(offsets, [common])[0] if common and ids else (0, 0)
        pooled = []
        for (first, stop), span in zip(_spans_to_tokens(offsets, spans), spans, strict=True):
            if not ids:
                pooled.append(fallback[d])
            elif stop > first:
                own = emb[first:stop]
                if b > a and (b <= first or a >= stop):  # the title, pooled with the chunk
                    own = torch.cat([emb[a:b], own])
                pooled.append(own.mean(dim=0))
            else:
                pooled.append(emb[_nearest_token(offsets, span)])
        per_doc.append(pooled)
    return _finish(model, per_doc, device, normalize)


def late_chunk_local(
    model: SentenceTransformer,
    docs: Sequence[tuple[str, Sequence[Span]]],
    max_tokens: int,
    context: int,
    normalize: bool = True,
    batch_size: int = 8,
    prompt: str | None = None,
    shared: Sequence[Span | None] | None = None,
) -> list[np.ndarray]:
    """Late chunking with bounded context: each chunk encoded in a window of its own, the
    chunk's tokens with up to ``context`` tokens of its document on each side (and the shared
    span, its title, in front when the window does not reach it), then pooled over the
    chunk's tokens and the title's only, as :func:`late_chunk_many` pools. ``context: 0``
    reads each chunk alone (plain chunking, title included); a context as long as the
    document is whole-document late chunking. Windows longer than ``max_tokens`` (specials
    included) give up context, evenly on both sides, never chunk tokens (a chunk longer than
    a window is cut, as plain chunking would cut it)."""
    import torch

    hf = _hf_model(model)
    tokenizer = model.tokenizer
    lead, trail = _special_frame(tokenizer)
    prompt_ids = list(tokenizer(prompt, add_special_tokens=False)["input_ids"]) if prompt else []
    head = lead + prompt_ids
    room = max_tokens - len(head) - len(trail)
    if room < 1:
        raise ValueError(f"window of {max_tokens} tokens leaves no room for text after specials")
    if context < 0:
        raise ValueError(f"context must be at least 0, got {context}")
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    device = next(hf.parameters()).device

    jobs = []  # (doc, chunk, input ids, pooled positions in the input)
    spans_of = []
    for d, (text, spans) in enumerate(docs):
        ids, offsets = _tokenize(tokenizer, text)
        common = shared[d] if shared else None
        a, b = _spans_to_tokens(offsets, [common])[0] if common and ids else (0, 0)
        ranges = _spans_to_tokens(offsets, spans) if ids else [(0, 0)] * len(spans)
        spans_of.append(len(spans))
        for c, ((first, stop), span) in enumerate(zip(ranges, spans, strict=True)):
            if stop <= first and ids:  # no token: the nearest one stands for it
                first = _nearest_token(offsets, span)
                stop = first + 1
            stop = min(stop, first + room)
            title = list(range(a, b)) if b > a and b <= first else []
            if room - len(title) < stop - first:  # no room for the title beside the chunk
                title = []
            spare = room - len(title) - (stop - first)
            floor = b if title else 0  # the title is not read twice
            want_left, want_right = min(context, first - floor), min(context, len(ids) - stop)
            left = min(want_left, spare // 2)
            right = min(want_right, spare - left)
            left = min(want_left, spare - right)
            lo, hi = first - left, stop + right
            body = ids[lo:hi]
            seq = head + [ids[t] for t in title] + body + trail
            own = [len(head) + i for i in range(len(title))]
            start = len(head) + len(title)
            own += [start + t - lo for t in range(first, stop)]
            if not ids:
                own = list(range(len(seq)))  # a document with no token: its specials
            jobs.append((d, c, seq, own))
    jobs.sort(key=lambda job: -len(job[2]))

    pooled: list[list[Any]] = [[None] * n for n in spans_of]
    with torch.inference_mode():
        for k in range(0, len(jobs), batch_size):
            batch = jobs[k : k + batch_size]
            states = _token_states(hf, [job[2] for job in batch], pad_id, device)
            for row, (d, c, _, own) in enumerate(batch):
                pooled[d][c] = states[row, own].mean(dim=0)
    return _finish(model, pooled, device, normalize)


def _token_states(hf: Any, seqs: Sequence[Sequence[int]], pad_id: int, device: Any) -> Any:
    """The model's last hidden states (float32, on the CPU) for token id sequences, padded
    to the longest with an attention mask."""
    import torch

    width = max(len(seq) for seq in seqs)
    input_ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for row, seq in enumerate(seqs):
        input_ids[row, : len(seq)] = torch.tensor(seq)
        mask[row, : len(seq)] = 1
    out = hf(input_ids=input_ids.to(device), attention_mask=mask.to(device))
    return (out[0] if isinstance(out, tuple) else out.last_hidden_state).float().cpu()


def _finish(model: Any, pooled: list[list[Any]], device: Any, normalize: bool) -> list[np.ndarray]:
    """Per document, its pooled chunk vectors through the modules after Pooling, L2-normalised
    when ``normalize``, as float32 arrays."""
    import torch

    post = _post_pooling_modules(model)
    results = []
    for vectors in pooled:
        if not vectors:
            results.append(np.zeros((0, _output_dims(model, None)), dtype=np.float32))
            continue
        stacked = torch.stack(vectors)
        if post:
            features = {"sentence_embedding": stacked.to(device)}
            with torch.inference_mode():
                for module in post:
                    features = module(features)
            stacked = features["sentence_embedding"].float().cpu()
        if normalize:
            stacked = stacked / stacked.norm(dim=1, keepdim=True).clamp(min=1e-12)
        results.append(stacked.numpy().astype(np.float32, copy=False))
    return results


def _output_dims(model: Any, hidden: int | None) -> int:
    dim_of = getattr(model, "get_embedding_dimension", None) or getattr(
        model, "get_sentence_embedding_dimension", None
    )
    dims = dim_of() if dim_of else None
    return int(dims or hidden or 0)
