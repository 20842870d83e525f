"""Subprocesses (``uv``, the env's python): the helpers the uv pool already has.

Both pools need the same thing (run a command as an asyncio subprocess, kill
its whole process group on cancellation or timeout, quote its stderr on
failure, find uv, pass the daemon's environment through), so this module
re-exports ``runtimed_uv_pool.uv`` instead of copying it. It is meant to move
into the core (e.g. ``runtimed.procs``); then only this import changes.
"""

from __future__ import annotations

from runtimed_uv_pool.uv import CommandFailed, find_uv, run, subprocess_env

__all__ = ["CommandFailed", "find_uv", "run", "subprocess_env"]
