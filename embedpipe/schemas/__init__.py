"""The Arrow schemas that flow between steps (DESIGN.md §3).

Each step declares the columns it *requires* from its input and the schema it *writes*. Steps pass
through columns they do not own, so a declared schema is a minimum, not an exact match. Columns
are only ever appended, never reordered or retyped.

A vector column whose dimension is not known before the model is loaded is a variable-size
``list<float32>``; the DAG check compares dimensions only where both sides know them.
"""

from __future__ import annotations

import hashlib

import pyarrow as pa

DOCUMENTS = pa.schema(
    [
        pa.field("doc_id", pa.string(), nullable=False),
        pa.field("text", pa.string()),
        pa.field("title", pa.string()),
        pa.field("source", pa.string()),
        pa.field("meta", pa.string()),  # JSON object
        pa.field("content_hash", pa.string()),
        pa.field("ingested_at", pa.timestamp("us", tz="UTC")),
    ],
    metadata={"embedpipe.kind": "documents"},
)

CHUNKS = pa.schema(
    [
        pa.field("chunk_id", pa.string(), nullable=False),  # doc_id + "#" + ordinal
        pa.field("doc_id", pa.string(), nullable=False),
        pa.field("ordinal", pa.int32()),
        pa.field("text", pa.string()),
        pa.field("title", pa.string()),
        pa.field("n_tokens", pa.int32()),
        pa.field("char_start", pa.int64()),
        pa.field("char_end", pa.int64()),
        pa.field("content_hash", pa.string()),  # of the parent document
    ],
    metadata={"embedpipe.kind": "chunks"},
)


def vector_type(dims: int | None) -> pa.DataType:
    """``fixed_size_list<float32, dims>``, or ``list<float32>`` while dims are unknown."""
    return pa.list_(pa.float32(), dims) if dims else pa.list_(pa.float32())


# A step that writes a column meant to be searched by distance marks it with its metric in the
# field's metadata; index steps declare every marked column of their input as a vector column.
METRIC = b"embedpipe.metric"


MADE_WITH = b"embedpipe.made_with"


def vector_field(
    name: str, type_: pa.DataType, metric: str, made_with: str | None = None
) -> pa.Field:
    """A column searched by ``metric`` (cosine, dot, l2, hamming). ``made_with``: the column
    that names, per row, the fitted state (an artifact id) the vector was made with; queries
    are then coded with the state the table's rows name."""
    meta = {METRIC: metric.encode()}
    if made_with:
        meta[MADE_WITH] = made_with.encode()
    return pa.field(name, type_, metadata=meta)


def made_with_of(f: pa.Field) -> str | None:
    value = (f.metadata or {}).get(MADE_WITH)
    return value.decode() if value else None


ANY_VECTOR = b"embedpipe.any_vector"


def any_vector(name: str, dims: int | None = None) -> pa.Field:
    """A required column: any vector of numbers (floats or integer codes) of ``dims``."""
    return pa.field(name, vector_type(dims), metadata={ANY_VECTOR: b"1"})


def metric_of(f: pa.Field) -> str | None:
    """The metric a vector column was marked with; None for any other column."""
    value = (f.metadata or {}).get(METRIC)
    return value.decode() if value else None


def embedding_fields(dims: int | None) -> list[pa.Field]:
    return [
        vector_field("vector", vector_type(dims), "cosine"),
        pa.field("model", pa.string()),
        pa.field("model_revision", pa.string()),
        pa.field("dims", pa.int32()),
        pa.field("normalized", pa.bool_()),
    ]


def embeddings(dims: int | None) -> pa.Schema:
    """Chunks plus their vectors: encode passes chunk columns through."""
    return pa.schema(
        list(CHUNKS) + embedding_fields(dims), metadata={"embedpipe.kind": "embeddings"}
    )


# Lineage columns say which run and spec wrote a row; they do not make it a different row.
LINEAGE = ("spec_hash", "run_id")
ROW_HASH = "row_hash"
ROW_HASH_SKIP = (*LINEAGE, ROW_HASH)


def index_table(upstream: pa.Schema) -> pa.Schema:
    """The rows of an index table: every column its input writes, in order (field metadata
    dropped), then the lineage columns and ``row_hash``, a digest of the row's other columns:
    a run rewrites a row only if it changed (vectors count by their bytes)."""
    own = set(ROW_HASH_SKIP)
    kept = [f.remove_metadata() for f in upstream if f.name not in own]
    extra = [pa.field(n, pa.string()) for n in (*LINEAGE, ROW_HASH)]
    return pa.schema(kept + extra, metadata={"embedpipe.kind": "index"})


def hash_rows(batch: pa.RecordBatch | pa.Table, columns: tuple[str, ...]) -> pa.Array:
    """One hex digest per row of the row's values in ``columns`` (cache keys, row hashes).
    Vectors are hashed by their bytes: a vector that changed at all changes the digest."""
    values = zip(*(_row_values(batch.column(c)) for c in columns), strict=True)
    return pa.array(
        [hashlib.blake2b(b"\x1f".join(row), digest_size=16).hexdigest() for row in values],
        pa.string(),
    )


def _row_values(col: pa.Array | pa.ChunkedArray) -> list[bytes]:
    if isinstance(col, pa.ChunkedArray):
        col = col.combine_chunks()
    t = col.type
    fixed = pa.types.is_fixed_size_list(t)
    numeric = fixed and (pa.types.is_floating(t.value_type) or pa.types.is_integer(t.value_type))
    if numeric and not col.null_count:
        flat = col.flatten().to_numpy(zero_copy_only=False)
        return [row.tobytes() for row in flat.reshape(len(col), t.list_size)]
    return [b"" if v is None else str(v).encode() for v in col.to_pylist()]


# Names `pipe sql` gives the run catalog's views. An index table is a view of its own name
# beside them, so it may not take one of these (it would hide the catalog's).
CATALOG_VIEWS = ("runs", "step_runs", "skipped", "evals")

# DuckDB keywords that cannot name a table unquoted (`select * from full` is a syntax error): its
# categories 'reserved' and 'type_function' (full, left, join, ...), written out from
#   select keyword_name from duckdb_keywords()
#   where keyword_category in ('reserved', 'type_function')
# (DuckDB 2.0.1) because only the engine may import duckdb; a test checks it still matches.
# fmt: off
SQL_RESERVED = frozenset({
    "all", "analyse", "analyze", "and", "anti", "any", "array", "as", "asc", "asof", "asymmetric",
    "at", "authorization", "binary", "both", "by", "case", "cast", "check", "collate", "collation",
    "column", "columns", "concurrently", "constraint", "create", "cross", "default", "deferrable",
    "desc", "describe", "distinct", "do", "else", "end", "except", "false", "fetch", "for",
    "foreign", "freeze", "from", "full", "generated", "glob", "group", "having", "ilike", "in",
    "initially", "inner", "intersect", "into", "is", "isnull", "join", "lambda", "lateral",
    "leading", "left", "like", "limit", "map", "natural", "not", "notnull", "null", "offset", "on",
    "only", "or", "order", "outer", "overlaps", "pivot", "pivot_longer", "pivot_wider", "placing",
    "positional", "primary", "qualify", "references", "returning", "right", "select", "semi",
    "show", "similar", "some", "struct", "summarize", "symmetric", "table", "tablesample", "then",
    "to", "trailing", "true", "try_cast", "tuple", "union", "unique", "unpack", "unpivot", "using",
    "variadic", "verbose", "when", "where", "window", "with"
})
# fmt: on


def kind(schema: pa.Schema) -> str:
    meta = schema.metadata or {}
    return meta.get(b"embedpipe.kind", b"table").decode()


def dims_of(t: pa.DataType) -> int | None:
    return t.list_size if pa.types.is_fixed_size_list(t) else None


def _compatible(have: pa.DataType, want: pa.DataType) -> bool:
    if have.equals(want):
        return True
    list_like = (pa.types.is_fixed_size_list, pa.types.is_list)
    if any(f(have) for f in list_like) and any(f(want) for f in list_like):
        if not have.value_type.equals(want.value_type):
            return False
        hd, wd = dims_of(have), dims_of(want)
        return hd is None or wd is None or hd == wd
    return False


def _numeric_vector(t: pa.DataType) -> bool:
    if not (pa.types.is_fixed_size_list(t) or pa.types.is_list(t)):
        return False
    return pa.types.is_floating(t.value_type) or pa.types.is_integer(t.value_type)


def mismatches(produced: pa.Schema, required: pa.Schema) -> list[str]:
    """Why ``produced`` cannot feed a step that requires ``required`` (empty if it can)."""
    problems = []
    for want in required:
        idx = produced.get_field_index(want.name)
        if idx < 0:
            problems.append(f"no column '{want.name}' ({type_name(want.type)})")
            continue
        have = produced.field(idx).type
        hd, wd = dims_of(have), dims_of(want.type)
        if hd and wd and hd != wd:
            problems.append(f"'{want.name}' holds {hd}-dim vectors, {wd}-dim required")
        elif (want.metadata or {}).get(ANY_VECTOR) and _numeric_vector(have):
            continue
        elif not _compatible(have, want.type):
            problems.append(f"'{want.name}' is {type_name(have)}, {type_name(want.type)} required")
    return problems


def type_name(t: pa.DataType) -> str:
    """``float32[384]`` for vectors, ``float32[?]`` while dims are unknown, else Arrow's name."""
    if pa.types.is_fixed_size_list(t) or pa.types.is_list(t):
        return f"{type_name(t.value_type)}[{dims_of(t) or '?'}]"
    return {"float": "float32", "halffloat": "float16", "double": "float64"}.get(str(t), str(t))


def describe(schema: pa.Schema) -> str:
    """One line, e.g. ``chunks(chunk_id, doc_id, ..., vector: float32[384])``."""
    cols = [
        f"{f.name}: {type_name(f.type)}"
        if pa.types.is_list(f.type) or pa.types.is_fixed_size_list(f.type)
        else f.name
        for f in schema
    ]
    return f"{kind(schema)}({', '.join(cols)})"
