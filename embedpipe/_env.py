"""Process defaults that must be set before Prefect or Hugging Face libraries are imported.

Users' own settings always win: every value is a default (``setdefault``).
"""

from __future__ import annotations

import os

DEFAULTS: dict[str, str] = {
    # Prefect: no analytics, no telemetry; nothing leaves loopback.
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "DO_NOT_TRACK": "1",
    # The first ephemeral start on a fresh PREFECT_HOME runs DB migrations (~16 s; default 20 s).
    "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "90",
    # Models resolve from local files; a run never downloads unless the user allows it
    # (HF_HUB_OFFLINE=0).
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_NO_ADVISORY_WARNINGS": "1",
    "TOKENIZERS_PARALLELISM": "false",
}


def apply() -> None:
    for key, value in DEFAULTS.items():
        os.environ.setdefault(key, value)


apply()
