"""Crash and pause points for the failure tests: ``EMBEDPIPE_CRASH_AT=<point>`` makes the process
SIGKILL itself there, so a test can stop a run at an exact moment no timer could hit reliably;
``EMBEDPIPE_PAUSE_AT=<point>`` makes it create the file ``$EMBEDPIPE_PAUSE_FILE`` there and
wait (up to two minutes) until the test deletes it, so the test can change the world (lock the
catalog, fill the disk) at that exact moment.

Points: ``encode`` (after the first encoded batch reached the step cache), ``index-write``
(while Lance is writing the new rows, before it commits), ``index-commit`` (just after the
commit, before the ANN index and the catalog are updated), ``record`` (the run is over; its
record is about to be written to the catalog).
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path


def crash_point(point: str) -> None:
    if os.environ.get("EMBEDPIPE_CRASH_AT") == point:
        os.kill(os.getpid(), signal.SIGKILL)
    if os.environ.get("EMBEDPIPE_PAUSE_AT") == point and (
        flag := os.environ.get("EMBEDPIPE_PAUSE_FILE")
    ):
        path = Path(flag)
        path.write_text(str(os.getpid()))
        deadline = time.monotonic() + 120
        while path.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
