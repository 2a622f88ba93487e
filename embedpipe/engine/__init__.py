"""The engine: the only code that imports Prefect, LanceDB and DuckDB."""

from embedpipe import _env  # noqa: F401  (Prefect and HF defaults before their imports)
