"""The engine: the only code that imports Prefect, LanceDB and DuckDB.

Its entry points apply the environment defaults (``embedpipe._env.apply``) before Prefect or
Hugging Face is imported; importing the package sets nothing.
"""
