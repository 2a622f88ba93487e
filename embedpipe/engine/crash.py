"""Crash points for the kill -9 tests: ``EMBEDPIPE_CRASH_AT=<point>`` makes the process SIGKILL
itself there, so a test can stop a run at an exact moment no timer could hit reliably.

Points: ``encode`` (after the first encoded batch reached the step cache), ``index-write``
(while Lance is writing the new rows, before it commits), ``index-commit`` (just after the
commit, before the ANN index and the catalog are updated).
"""

from __future__ import annotations

import os
import signal


def crash_point(point: str) -> None:
    if os.environ.get("EMBEDPIPE_CRASH_AT") == point:
        os.kill(os.getpid(), signal.SIGKILL)
