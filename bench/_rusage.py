"""Run a Python script in this process and record its peak RSS and CPU time when it exits.

    python bench/_rusage.py OUT.json SCRIPT [ARGS...]

SCRIPT runs as ``__main__`` with ``sys.argv = [SCRIPT, *ARGS]`` (a console-script shim such as
``.venv/bin/pipe`` works as is), so the figures are those of the measured program itself.
(``RUSAGE_CHILDREN`` read by a parent that runs several programs would not do: its
``ru_maxrss`` is the max over every child it ever waited for, so a "delta" of it means nothing.)
At exit, OUT.json gets:

    self_kib, self_cpu_s          peak RSS (ru_maxrss, KiB on Linux) and user + system CPU
                                  seconds of this process, all its threads
    children_kib, children_cpu_s  the largest peak RSS among the children this process waited
                                  for (e.g. Prefect's ephemeral server), and their CPU seconds;
                                  0 when there were none
"""

from __future__ import annotations

import atexit
import json
import resource
import runpy
import sys
from pathlib import Path


def _report(out: Path) -> None:
    own = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    data = {
        "self_kib": own.ru_maxrss,
        "self_cpu_s": own.ru_utime + own.ru_stime,
        "children_kib": children.ru_maxrss,
        "children_cpu_s": children.ru_utime + children.ru_stime,
    }
    out.write_text(json.dumps(data))


def main() -> None:
    if len(sys.argv) < 3:
        sys.exit(f"usage: {sys.argv[0]} OUT.json SCRIPT [ARGS...]")
    out, script, *args = sys.argv[1:]
    # Registered first, so it runs last: after the script's own exit handlers (Prefect stops
    # and waits for its ephemeral server in one), so that server is counted among the children.
    atexit.register(_report, Path(out))
    sys.argv = [script, *args]
    sys.path[0] = str(Path(script).resolve().parent)
    runpy.run_path(script, run_name="__main__")


if __name__ == "__main__":
    main()
