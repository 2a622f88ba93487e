"""Vector codecs: what the ``compress`` step stores instead of (or beside) float vectors.

Each codec turns L2-normalised float vectors into codes, turns a float query into what the
store searches the codes with (``query``), and scores a float query against stored codes
without decoding them back to floats (``score``, the *asymmetric* distance). Fitted codecs
(int8 ranges, a PCA rotation) keep their parameters in ``state``: arrays saved in an
artifact, so a re-load encodes bit-identically.

=============  ===========================  =========  ====================================
method         code                         metric     fitted
=============  ===========================  =========  ====================================
binary         sign bits packed, uint8[d/8] hamming    no
int8           per-dimension ranges, int8[d] dot       ranges at two percentiles of the corpus
matryoshka     the first ``dims``, float32  cosine     no (re-normalised)
pca            rotated, the first ``dims``  cosine     a PCA rotation of the corpus vectors
=============  ===========================  =========  ====================================
"""

from __future__ import annotations

from typing import ClassVar

import numpy as np
import pyarrow as pa

BLOCK = 65536  # rows scored at a time by the in-process scorers


class Codec:
    """Base class; ``dims`` is the float input's dimension, ``keep`` the dims a code keeps."""

    method: ClassVar[str]
    metric: ClassVar[str]
    fitted: ClassVar[bool] = False

    def __init__(self, dims: int, keep: int | None = None) -> None:
        self.dims = dims
        self.keep = keep or dims
        self.state: dict[str, np.ndarray] = {}

    # -- shape -------------------------------------------------------------------------------
    def code_type(self) -> pa.DataType:
        raise NotImplementedError

    def code_bytes(self) -> int:
        t = self.code_type()
        return t.list_size * t.value_type.bit_width // 8

    # -- fitting -----------------------------------------------------------------------------
    def fit(self, sample: np.ndarray) -> None:
        """Learn the codec's parameters from corpus vectors (rows of ``sample``)."""

    def load(self, state: dict[str, np.ndarray]) -> None:
        self.state = {k: np.asarray(v) for k, v in state.items()}

    # -- coding ------------------------------------------------------------------------------
    def encode(self, x: np.ndarray) -> np.ndarray:
        """Codes of float vectors ``x`` (n, dims), one row each."""
        raise NotImplementedError

    def query(self, q: np.ndarray) -> np.ndarray:
        """What the store searches the codes with, for float queries ``q`` (n, dims)."""
        return self.encode(q)

    def score(self, q: np.ndarray, codes: np.ndarray) -> np.ndarray:
        """Scores (higher is better) of stored ``codes`` (n, m) for one float query ``q``
        (dims,), computed from the codes as they are stored."""
        raise NotImplementedError

    def arrow(self, codes: np.ndarray) -> pa.FixedSizeListArray:
        t = self.code_type()
        flat = pa.array(np.ascontiguousarray(codes).reshape(-1), t.value_type)
        return pa.FixedSizeListArray.from_arrays(flat, t.list_size)


def _unit(x: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return (x / np.where(norms == 0, 1.0, norms)).astype(np.float32)


class Binary(Codec):
    """One sign bit per dimension, packed 8 to a byte (big-endian bit order, as numpy's
    ``packbits``); Hamming distance approximates the angle between vectors."""

    method = "binary"
    metric = "hamming"

    def code_type(self) -> pa.DataType:
        return pa.list_(pa.uint8(), self.dims // 8)

    def encode(self, x: np.ndarray) -> np.ndarray:
        return np.packbits(np.asarray(x) > 0, axis=1)

    def score(self, q: np.ndarray, codes: np.ndarray) -> np.ndarray:
        # q · (2b - 1) = 2 Σ_{bit set} q_i - Σ q: one table of 256 partial sums per code byte,
        # so a row costs d/8 look-ups, never an unpacked float row.
        q = np.asarray(q, np.float32).reshape(-1, 8)  # (bytes, 8)
        bits = np.unpackbits(np.arange(256, dtype=np.uint8)[:, None], axis=1)  # (256, 8)
        tables = q @ bits.T.astype(np.float32)  # (bytes, 256)
        sums = np.zeros(len(codes), np.float32)
        for j in range(codes.shape[1]):  # one byte column at a time: no (n, bytes) temporary
            sums += tables[j][codes[:, j]]
        # divided by |±1 vector| = √d: the cosine of a unit query with the sign vector
        return ((2.0 * sums - q.sum()) / np.sqrt(self.dims)).astype(np.float32)


class Int8(Codec):
    """Each dimension mapped linearly from a calibrated range [lo, hi] (two percentiles of the
    corpus, outliers clipped) onto -128..127."""

    method = "int8"
    metric = "dot"
    fitted = True
    percentile = 0.1  # the range spans the 0.1th to 99.9th percentile of each dimension

    def code_type(self) -> pa.DataType:
        return pa.list_(pa.int8(), self.dims)

    def fit(self, sample: np.ndarray) -> None:
        lo = np.percentile(sample, self.percentile, axis=0)
        hi = np.percentile(sample, 100 - self.percentile, axis=0)
        hi = np.maximum(hi, lo + 1e-6)
        self.state = {"lo": lo.astype(np.float32), "hi": hi.astype(np.float32)}

    def _step(self) -> np.ndarray:
        return (self.state["hi"] - self.state["lo"]) / 255.0

    def encode(self, x: np.ndarray) -> np.ndarray:
        levels = np.rint((np.asarray(x, np.float32) - self.state["lo"]) / self._step())
        return (np.clip(levels, 0, 255) - 128).astype(np.int8)

    def decode(self, codes: np.ndarray) -> np.ndarray:
        return self.state["lo"] + (codes.astype(np.float32) + 128.0) * self._step()

    def score(self, q: np.ndarray, codes: np.ndarray) -> np.ndarray:
        # q · decode(c) = q · lo + Σ (q * step)_i (c_i + 128), without decoding every row
        q = np.asarray(q, np.float32)
        w = q * self._step()
        out = np.empty(len(codes), np.float32)
        for i in range(0, len(codes), BLOCK):  # in blocks: no float copy of every code at once
            out[i : i + BLOCK] = codes[i : i + BLOCK].astype(np.float32) @ w
        return out + (128.0 * w.sum() + q @ self.state["lo"])


class Matryoshka(Codec):
    """The first ``keep`` dimensions, re-normalised (for models trained with MRL; others lose
    more than ``pca`` does)."""

    method = "matryoshka"
    metric = "cosine"

    def code_type(self) -> pa.DataType:
        return pa.list_(pa.float32(), self.keep)

    def encode(self, x: np.ndarray) -> np.ndarray:
        return _unit(np.asarray(x, np.float32)[:, : self.keep])

    def score(self, q: np.ndarray, codes: np.ndarray) -> np.ndarray:
        return codes.astype(np.float32) @ self.query(np.asarray(q)[None, :])[0]


class Pca(Matryoshka):
    """A rotation onto the corpus's principal axes (fitted), then the first ``keep``
    dimensions, re-normalised: keeps more of the geometry than plain truncation.

    The axes are the eigenvectors of the corpus's second-moment matrix ``XᵀX / n``, not of its
    covariance: the vectors are not centred, so the full rotation keeps every dot product, and
    a query needs no corpus mean. (On SciFact with all-MiniLM-L6-v2, nDCG@10 at 128 dims: 0.636
    uncentred, 0.611 centred, 0.602 plain truncation; float 0.645.)"""

    method = "pca"
    fitted = True

    def fit(self, sample: np.ndarray) -> None:
        x = np.asarray(sample, np.float64)
        values, vectors = np.linalg.eigh(x.T @ x / len(x))  # ascending
        rotation = vectors[:, np.argsort(values)[::-1]]
        # A deterministic sign per axis (eigh's is arbitrary): the largest loading positive.
        signs = np.sign(rotation[np.abs(rotation).argmax(axis=0), np.arange(rotation.shape[1])])
        rotation *= np.where(signs == 0, 1.0, signs)
        self.state = {"rotation": rotation.astype(np.float32)}

    def encode(self, x: np.ndarray) -> np.ndarray:
        rotated = np.asarray(x, np.float32) @ self.state["rotation"][:, : self.keep]
        return _unit(rotated)


CODECS: dict[str, type[Codec]] = {c.method: c for c in (Binary, Int8, Matryoshka, Pca)}
