"""embedpipe.steps.longctx: position extension, TempScale, attention scaling, late chunking.

One private copy of the default model per module (the process-wide cached one is never
changed); every test undoes its changes with longctx.reset. Inputs are a few short texts and
one ~1,500-token text, so the whole file runs in seconds on a CPU.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from embedpipe import models
from embedpipe.steps import longctx

SHORT = [
    "Vitamin D supplementation in older adults reduced the rate of hip fractures.",
    "Honeybees use the sun's position and a waggle dance to share flower locations.",
    "Sulfur aerosols from large eruptions cool the planet for one or two years.",
    "A sourdough starter is a culture of wild yeast and lactic acid bacteria.",
]
CHUNKS = [
    "Honeybees navigate by the position of the sun and tell each other where flowers are "
    "with a waggle dance performed inside the hive.",
    "The Sicilian Defence answers the king's pawn opening with c5 and leads to sharp, "
    "unbalanced positions that favour the well-prepared player.",
    "Matter falling into a black hole heats up and emits X-rays before it crosses the "
    "event horizon, which lets astronomers find black holes.",
]
DOC = " ".join(CHUNKS)
SPANS = []
_at = 0
for _chunk in CHUNKS:
    SPANS.append((_at, _at + len(_chunk)))
    _at += len(_chunk) + 1


def _long_text(tokens: int, tokenizer) -> str:
    """Varied prose of about ``tokens`` tokens."""
    pieces, text = [*SHORT, *CHUNKS], ""
    i = 0
    while len(tokenizer(text, add_special_tokens=False)["input_ids"]) < tokens:
        text += pieces[i % len(pieces)] + " "
        i += 1
    return text.strip()


@pytest.fixture(scope="module")
def model():
    from sentence_transformers import SentenceTransformer

    ref = models.resolve(models.DEFAULT_MODEL, Path("."))
    return SentenceTransformer(ref.location, device="cpu", local_files_only=True)


@pytest.fixture(autouse=True)
def _undo(request):
    yield
    if "model" in request.fixturenames:
        longctx.reset(request.getfixturevalue("model"))


@pytest.fixture(scope="module")
def long_text(model) -> str:
    return _long_text(1500, model.tokenizer)


def encode(model, texts: list[str], batch_size: int = 32) -> np.ndarray:
    return model.encode(
        texts,
        batch_size=batch_size,
        convert_to_numpy=True,
        normalize_embeddings=True,
        show_progress_bar=False,
    )


def n_tokens(model, text: str) -> int:
    return len(model.tokenizer(text)["input_ids"])


# --------------------------------------------------------------------------------------------
# Neutral settings are bit-identical


def test_neutral_settings_are_bit_identical(model):
    base = encode(model, SHORT)
    table = model[0].auto_model.embeddings.position_embeddings
    longctx.set_temperature(model, 1.0)
    longctx.attention_scaling(model, False)
    longctx.extend_positions(model, 512, "linear")
    assert model[0].auto_model.embeddings.position_embeddings is table
    assert np.array_equal(encode(model, SHORT), base)
    # scaling on, but every text is under trained_len tokens: factor 1, bit for bit
    longctx.attention_scaling(model, True)
    assert np.array_equal(encode(model, SHORT), base)


def test_reset_after_every_change_is_bit_identical(model):
    base = encode(model, SHORT)
    longctx.extend_positions(model, 2048, "linear")
    longctx.set_temperature(model, 0.7)
    longctx.attention_scaling(model, True, trained_len=8)
    assert not np.array_equal(encode(model, SHORT), base)
    longctx.reset(model)
    assert model.max_seq_length == 256
    assert model[0].auto_model.config.max_position_embeddings == 512
    assert np.array_equal(encode(model, SHORT), base)


# --------------------------------------------------------------------------------------------
# TempScale


def test_temperature_changes_embeddings_and_does_not_compound(model):
    base = encode(model, SHORT)
    longctx.set_temperature(model, 0.8)
    once = encode(model, SHORT)
    assert not np.allclose(once, base, atol=1e-4)
    longctx.set_temperature(model, 0.8)
    assert np.array_equal(encode(model, SHORT), once)
    attention = model[0].auto_model.encoder.layer[0].attention.self
    assert attention.scaling == attention.attention_head_size**-0.5 / 0.8
    longctx.set_temperature(model, 1.0)
    assert np.array_equal(encode(model, SHORT), base)
    with pytest.raises(ValueError, match="positive"):
        longctx.set_temperature(model, 0.0)


# --------------------------------------------------------------------------------------------
# Position extension


@pytest.mark.parametrize("method", ["linear", "grouped", "recurrent"])
def test_extend_positions_encodes_long_text(model, long_text, method):
    original = model[0].auto_model.embeddings.position_embeddings.weight.detach().clone()
    longctx.extend_positions(model, 2048, method)
    hf = model[0].auto_model
    table = hf.embeddings.position_embeddings.weight.detach()
    assert table.shape == (2048, original.shape[1])
    assert hf.embeddings.position_ids.shape == (1, 2048)
    assert hf.embeddings.token_type_ids.shape == (1, 2048)
    assert hf.config.max_position_embeddings == 2048
    assert model.max_seq_length == 2048
    s, p = 4, torch.arange(2048)
    if method == "linear":
        assert torch.equal(table[::s], original)  # row p * s is the learned row p
        assert torch.allclose(table[1], 0.75 * original[0] + 0.25 * original[1], atol=1e-6)
        assert torch.isfinite(table).all()
    elif method == "grouped":
        assert torch.equal(table, original[p // s])
    else:
        assert torch.equal(table, original[p % 512])

    assert 1400 < n_tokens(model, long_text) <= 2048
    vectors = encode(model, [long_text, SHORT[0]])
    assert vectors.shape == (2, 384)
    assert np.isfinite(vectors).all()
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)


def test_extend_positions_twice_rebuilds_from_the_original(model):
    original = model[0].auto_model.embeddings.position_embeddings.weight.detach().clone()
    longctx.extend_positions(model, 4096, "grouped")
    longctx.extend_positions(model, 1024, "recurrent")
    table = model[0].auto_model.embeddings.position_embeddings.weight.detach()
    assert torch.equal(table, original[torch.arange(1024) % 512])
    # non-multiple target: s = ceil(1000 / 512) = 2; the tail continues the last interval
    longctx.extend_positions(model, 1000, "linear")
    table = model[0].auto_model.embeddings.position_embeddings.weight.detach()
    assert table.shape[0] == 1000
    assert torch.equal(table[::2], original[:500])


def test_extend_positions_rejects_bad_input(model):
    with pytest.raises(ValueError, match="unknown position extension method"):
        longctx.extend_positions(model, 2048, "ntk")


def _tiny_rope_model():
    from transformers import ModernBertConfig, ModernBertModel

    config = ModernBertConfig(
        vocab_size=64,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=2,
        max_position_embeddings=128,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
        cls_token_id=1,
        sep_token_id=2,
    )
    return ModernBertModel(config).eval()


def test_rope_detection_and_errors(model):
    assert longctx.uses_rope(model) is False
    with pytest.raises(ValueError, match="BertModel"):
        longctx.apply_ntk(model, 4.0)
    rope = _tiny_rope_model()
    assert longctx.uses_rope(rope) is True
    with pytest.raises(ValueError, match="ModernBertModel"):
        longctx.extend_positions(rope, 1024, "linear")


def test_apply_ntk_scales_the_rope_base():
    rope = _tiny_rope_model()
    buffers = {
        (path, name): buf.clone()
        for path, module in rope.named_modules()
        for name, buf in module.named_buffers(recurse=False)
        if name.endswith("inv_freq")
    }
    assert buffers
    theta = {k: v["rope_theta"] for k, v in rope.config.rope_parameters.items()}
    longctx.apply_ntk(rope, 4.0)
    longctx.apply_ntk(rope, 4.0)  # replaces, never compounds
    for kind, value in theta.items():
        assert rope.config.rope_parameters[kind]["rope_theta"] == value * 4.0
    for (path, name), before in buffers.items():
        after = getattr(rope.get_submodule(path), name)
        half = before.shape[0]
        expected = before * 4.0 ** -(torch.arange(half, dtype=torch.float64) / half)
        assert torch.allclose(after, expected.float())
    longctx.apply_ntk(rope, 1.0)
    for (path, name), before in buffers.items():
        assert torch.equal(getattr(rope.get_submodule(path), name), before)


# --------------------------------------------------------------------------------------------
# Attention scaling


def test_attention_scaling_only_changes_rows_past_trained_len(model):
    short, long = "Honeybees dance.", CHUNKS[1]
    trained = 16
    assert n_tokens(model, short) < trained < n_tokens(model, long)
    base = encode(model, [short, long])
    longctx.attention_scaling(model, True, trained_len=trained)
    scaled = encode(model, [short, long])
    assert np.array_equal(scaled[0], base[0])
    assert not np.allclose(scaled[1], base[1], atol=1e-4)
    longctx.attention_scaling(model, True, trained_len=trained)  # replaces the hooks
    assert np.array_equal(encode(model, [short, long]), scaled)
    longctx.attention_scaling(model, False)
    assert np.array_equal(encode(model, [short, long]), base)


def test_attention_scaling_padded_rows_equal_solo(model):
    texts = ["Honeybees dance.", CHUNKS[0], CHUNKS[1] + " " + CHUNKS[2], SHORT[2]]
    longctx.attention_scaling(model, True, trained_len=16)
    batched = encode(model, texts, batch_size=8)  # one batch, three lengths: padding
    solo = np.vstack([encode(model, [t]) for t in texts])
    assert np.allclose(batched, solo, atol=1e-5)


def test_attention_scaling_on_extended_model_changes_long_text(model, long_text):
    longctx.extend_positions(model, 2048, "linear")
    plain = encode(model, [long_text])
    longctx.attention_scaling(model, True)
    scaled = encode(model, [long_text])
    assert np.isfinite(scaled).all()
    assert not np.allclose(plain, scaled, atol=1e-4)


def test_length_factors():
    log512 = np.log(512)
    mask = torch.zeros((2, 1024), dtype=torch.long)
    mask[0, :1024] = 1
    mask[1, :100] = 1
    factors = longctx.length_factors(mask, None, None, log512)
    assert factors.shape == (2, 1, 1)
    assert factors[0].item() == pytest.approx(np.log(1024) / log512)
    assert factors[1].item() == 1.0
    packed = longctx.length_factors(None, None, torch.tensor([0, 3, 1027]), log512)
    assert packed.shape == (1, 1027, 1)
    assert (packed[0, :3] == 1.0).all()
    assert torch.allclose(packed[0, 3:], torch.tensor(np.log(1024) / log512, dtype=torch.float))


# --------------------------------------------------------------------------------------------
# Late chunking


def test_token_spans_maps_characters_to_tokens(model):
    tok = model.tokenizer
    text = "Hello world. Second  sentence here."
    spans = [(0, 12), (13, 35), (12, 13), (5, 5), (0, 35)]
    got = longctx.token_spans(tok, text, spans)
    ids = tok(text, add_special_tokens=False)["input_ids"]
    words = tok.convert_ids_to_tokens(ids)
    assert words[got[0][0] : got[0][1]] == ["hello", "world", "."]
    assert words[got[1][0] : got[1][1]] == ["second", "sentence", "here", "."]
    assert got[2][0] == got[2][1]  # a space: no token
    assert got[3][0] == got[3][1]  # empty span
    assert got[4] == (0, len(ids))
    assert longctx.token_spans(tok, text, [(0, 35)], max_tokens=3) == [(0, 3)]


def test_macro_windows_tile_the_text():
    assert longctx.macro_windows(10, 20, 5) == [(0, 0, 10)]
    assert longctx.macro_windows(0, 20, 5) == [(0, 0, 0)]
    for n, content, overlap in [(100, 30, 10), (61, 30, 0), (1000, 510, 128), (31, 30, 29)]:
        windows = longctx.macro_windows(n, content, overlap)
        owned = [t for _, a, b in windows for t in range(a, b)]
        assert owned == list(range(n))
        for k, (start, a, b) in enumerate(windows):
            assert start <= a < b <= start + content
            if k > 0:  # the overlap is split at its middle
                assert a - start >= overlap // 2
            if k < len(windows) - 1:
                assert start + content - b >= overlap // 2
        assert windows[-1][0] + content == n


def test_late_chunk_vectors_one_window(model):
    vectors = longctx.late_chunk_vectors(model, DOC, SPANS, max_tokens=512)
    assert vectors.shape == (len(SPANS), 384)
    assert vectors.dtype == np.float32
    assert np.isfinite(vectors).all()
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    # a single span over the whole text is the document's mean-pooled embedding, less [CLS]/[SEP]
    whole = longctx.late_chunk_vectors(model, DOC, [(0, len(DOC))], max_tokens=512)
    assert float(whole[0] @ encode(model, [DOC])[0]) > 0.98  # 0.9995
    # each chunk's late vector is nearest to its own chunk encoded alone
    naive = encode(model, CHUNKS)
    assert (np.argmax(vectors @ naive.T, axis=1) == np.arange(len(CHUNKS))).all()


def test_late_chunk_vectors_stitched_windows(model):
    total = n_tokens(model, DOC) - 2
    single = longctx.late_chunk_vectors(model, DOC, SPANS, max_tokens=512)
    stitched = longctx.late_chunk_vectors(model, DOC, SPANS, max_tokens=512, window=40, overlap=8)
    assert len(longctx.macro_windows(total, 38, 8)) == 3  # several windows
    assert stitched.shape == single.shape
    assert np.isfinite(stitched).all()
    assert np.allclose(np.linalg.norm(stitched, axis=1), 1.0, atol=1e-5)
    assert (np.sum(stitched * single, axis=1) > 0.6).all()  # 0.72-0.92 (less context)
    naive = encode(model, CHUNKS)
    assert (np.argmax(stitched @ naive.T, axis=1) == np.arange(len(CHUNKS))).all()
    # stitching never changes the tokens of a window that holds the whole text
    same = longctx.late_chunk_vectors(model, DOC, SPANS, max_tokens=512, window=total + 2)
    assert np.allclose(same, single, atol=1e-6)


def test_late_chunk_empty_spans_and_texts(model):
    text = "Honeybees dance.   Bread rises."
    spans = [(0, 16), (16, 19), (19, 19), (len(text), len(text))]
    vectors = longctx.late_chunk_vectors(model, text, spans, max_tokens=512)
    assert vectors.shape == (4, 384)
    assert np.isfinite(vectors).all()
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    empty = longctx.late_chunk_vectors(model, "   ", [(0, 3), (0, 0)], max_tokens=512)
    assert empty.shape == (2, 384)
    assert np.isfinite(empty).all()
    none = longctx.late_chunk_vectors(model, text, [], max_tokens=512)
    assert none.shape == (0, 384)


def test_late_chunk_many_matches_one_by_one(model):
    docs = [(DOC, SPANS), (SHORT[0], [(0, 11), (12, len(SHORT[0]))]), ("", [(0, 0)])]
    many = longctx.late_chunk_many(model, docs, max_tokens=512, window=48, overlap=8, batch_size=3)
    assert [v.shape for v in many] == [(3, 384), (2, 384), (1, 384)]
    for (text, spans), got in zip(docs, many, strict=True):
        one = longctx.late_chunk_vectors(model, text, spans, max_tokens=512, window=48, overlap=8)
        assert np.allclose(got, one, atol=1e-5)


def test_late_chunk_title_and_bounded_context(model):
    title = "Remote control design"
    text = f"{title}\n\n{DOC}"
    spans = [(a + len(title) + 2, b + len(title) + 2) for a, b in SPANS]
    shared = [(0, len(title))]
    whole = longctx.late_chunk_many(model, [(text, spans)], 512, shared=shared)[0]
    untitled = longctx.late_chunk_many(model, [(text, spans)], 512)[0]
    assert not np.allclose(whole, untitled, atol=1e-4)  # the title is pooled into each chunk
    # a context past the document's length reads what whole-document late chunking reads
    far = longctx.late_chunk_local(model, [(text, spans)], 512, 10_000, shared=shared)[0]
    assert np.allclose(far, whole, atol=1e-5)
    # no context: each chunk read alone with its title, near plain chunking's vector
    alone = longctx.late_chunk_local(model, [(text, spans)], 512, 0, shared=shared)[0]
    plain = encode(model, [f"{title}\n\n{c}" for c in CHUNKS])
    assert (np.sum(alone * plain, axis=1) > 0.95).all()
    assert (np.sum(alone * plain, axis=1) > np.sum(whole * plain, axis=1)).all()
    some = longctx.late_chunk_local(model, [(text, spans)], 512, 4, shared=shared)[0]
    assert not np.allclose(some, alone, atol=1e-4) and not np.allclose(some, whole, atol=1e-4)
    # a window too small for the context gives up context, never chunk tokens
    tight = longctx.late_chunk_local(model, [(text, spans)], 24, 50, shared=shared)[0]
    assert tight.shape == (3, 384) and np.isfinite(tight).all()
    empty = longctx.late_chunk_local(model, [("", [(0, 0)]), (text, [])], 512, 8)
    assert empty[0].shape == (1, 384) and empty[1].shape == (0, 384)


def test_late_chunk_with_prompt_and_extension(model, long_text):
    with pytest.raises(ValueError, match="extend_positions"):
        longctx.late_chunk_vectors(model, long_text, [(0, 10)], max_tokens=2048)
    longctx.extend_positions(model, 2048, "linear")
    spans = [(0, len(long_text) // 2), (len(long_text) // 2, len(long_text))]
    vectors = longctx.late_chunk_vectors(model, long_text, spans, 2048, prompt="passage: ")
    assert vectors.shape == (2, 384)
    assert np.isfinite(vectors).all()
    with pytest.raises(ValueError, match="overlap"):
        longctx.late_chunk_vectors(model, DOC, SPANS, max_tokens=512, window=20, overlap=18)


def test_late_chunk_with_attention_scaling(model):
    # late chunking calls the HF model itself: the hooks must see its attention mask too
    plain = longctx.late_chunk_vectors(model, DOC, SPANS, max_tokens=512, window=48, overlap=8)
    longctx.attention_scaling(model, True, trained_len=16)
    scaled = longctx.late_chunk_vectors(model, DOC, SPANS, max_tokens=512, window=48, overlap=8)
    assert np.isfinite(scaled).all()
    assert not np.allclose(plain, scaled, atol=1e-4)
