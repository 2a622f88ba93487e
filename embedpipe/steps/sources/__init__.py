"""sources: the ingest step's helpers, one concern to a module.

The step itself (``embedpipe.steps.ingest``) keeps its config, the loop over files and the
rules for skipping; these modules find the files and turn each one into documents:

- ``walk``: which files a source names (paths, directories, globs), walked safely.
- ``sniff``: whether a file can be read as text at all, decided before parsing it.
- ``rows``: records from the row formats (JSON Lines, JSON, BEIR, CSV, Parquet).
- ``whole``: one document per file (text, markdown, HTML, PDF).
- ``doc``: what they share: the ``Doc`` they yield and the ``Skip`` they raise instead.
"""
