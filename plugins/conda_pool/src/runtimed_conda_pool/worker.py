"""The conda part of a build in a process of its own: ``python -m runtimed_conda_pool.worker REQUEST``.

The daemon lives for days, and rattler's solver and installer allocate tens of MB in
native code that the process keeps (measured: a daemon held ~25 MB more after its first
conda build, and ~1.5 MB more after every install after that). So
:meth:`runtimed_conda_pool.build.Builder.build` runs its rattler steps here, one process
per build (:meth:`~runtimed_conda_pool.build.Builder.conda_step`: solve or take a
lock's records, install, write ``conda-lock.yml``); pip, activation and the warm-up stay
in the daemon, as subprocesses of their own.

``REQUEST`` is a JSON file (what ``conda_step`` takes, plus ``cache_root``, ``platform``
and ``solve_timeout``). Progress goes to stderr, one ``runtimed-progress [phase,
message]`` line each; the result to stdout, one JSON line: ``{"packages": N}`` or
``{"failed": message}`` (a build that failed for a reason a user can act on; the
process still exits 0).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import sys
from pathlib import Path
from typing import Any

from runtimed.prewarm import BuildFailed
from runtimed_conda_pool.build import WORKER_PROGRESS, Builder


def _progress(phase: str, message: str) -> None:
    print(WORKER_PROGRESS + json.dumps([phase, message]), file=sys.stderr, flush=True)


async def _run(request: dict[str, Any]) -> dict[str, Any]:
    builder = Builder(cache_root=Path(request["cache_root"]), platform=request["platform"],
                      log=logging.getLogger("runtimed.pools.conda.worker"),
                      solve_timeout=float(request["solve_timeout"]), isolate=False)
    try:
        return {"packages": await builder.conda_step(request, _progress)}
    except BuildFailed as exc:
        return {"failed": str(exc)}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    request = json.loads(Path(argv[0]).read_text())
    print(json.dumps(asyncio.run(_run(request))), flush=True)
    return 0


if __name__ == "__main__":
    code = main()
    sys.stderr.flush()
    # Not a normal interpreter exit: rattler's native threads sometimes crash it while it
    # finalizes (SIGSEGV, seen after a failed repodata fetch). The answer is out; just go.
    os._exit(code)
