"""Run a Python script in this process and record its peak RSS when the process exits.

    python bench/_peak_rss.py OUT.json SCRIPT [ARGS...]

SCRIPT runs as ``__main__`` with ``sys.argv = [SCRIPT, *ARGS]`` (a console-script shim such as
``.venv/bin/pipe`` works as is), so the figures are those of the measured program itself, not a
max over every child some parent ever waited for. At exit, OUT.json gets:

    self_kib      peak RSS of this process (ru_maxrss of RUSAGE_SELF; KiB on Linux)
    children_kib  the largest peak RSS among the children this process waited for (e.g. the
                  Prefect server started in ephemeral mode); 0 when there were none
"""

from __future__ import annotations

import atexit
import json
import resource
import runpy
import sys
from pathlib import Path


def _report(out: Path) -> None:
    data = {
        "self_kib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
        "children_kib": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss,
    }
    out.write_text(json.dumps(data))


def main() -> None:
    if len(sys.argv) < 3:
        sys.exit(f"usage: {sys.argv[0]} OUT.json SCRIPT [ARGS...]")
    out, script, *args = sys.argv[1:]
    # Registered first, so it runs last: after the script's own exit handlers (Prefect stops
    # and waits for its ephemeral server in one), so their children are counted too.
    atexit.register(_report, Path(out))
    sys.argv = [script, *args]
    sys.path[0] = str(Path(script).resolve().parent)
    runpy.run_path(script, run_name="__main__")


if __name__ == "__main__":
    main()
