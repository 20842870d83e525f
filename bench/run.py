#!/usr/bin/env python
"""runtimed vs plain jupyter_client, side by side, on this machine (issue 6).

    uv run python bench/run.py [--quick] [--scenarios start,roundtrip] [--out bench/results/latest.json]

Every scenario starts its own isolated daemon (its own socket, cache, state and
log directories under a temporary root, see ``runtimed.pytest_plugin.DaemonProcess``)
so a user's daemon is never touched, and runs the plain jupyter_client
equivalent on the same interpreter and the same ipykernel (a uv venv built with
the very commands the uv pool uses). Results go to a JSON file and a markdown
table on stdout. See bench/README.md.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import datetime as _dt
import hashlib
import inspect
import json
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import traceback
import types
import uuid
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

warnings.filterwarnings("ignore", category=DeprecationWarning)

BENCH_DIR = Path(__file__).resolve().parent
REPO = BENCH_DIR.parent
SCENARIOS = ("start", "roundtrip", "output", "multiclient", "bigdoc", "files", "viewer", "agents",
             "widgets", "memory", "conda_memory", "pool", "restart", "jupyter", "gateway", "scale",
             "convergence")
KERNEL_NAME = "bench-python"
#: What the uv pool installs into every env (runtimed_uv_pool.pool.BASE_PACKAGES).
POOL_PACKAGES = ("ipykernel", "ipywidgets")
POOL_WARM_UP = "import ipykernel.kernelapp, ipywidgets"

# Targets from issue 6 (benchmark figures, not timed tests).
TARGETS = {
    "start": "<= 0.6 s (<= 100 ms with hot kernels)",
    "roundtrip_p50": "<= 6 ms and <= 1.6x jc",
    "roundtrip_growth": "last 25 <= 1.2x first 25",
    "lines_10k": "<= 0.15 s",
    "lines_100k": "complete, <= 1.5x jc",
    "propagation": "<= 5 ms median",
    "rss_idle": "<= 50 MB (with the HTTP server)",
    "display_10mb": "byte-exact, <= 1.5x jc",
    "png_visible": "<= 50 ms p50",
    "rss_per_kernel": "<= 5 MB",
    "restart": "<= 0.7 s",
    "file_open": "<= 2x nbformat.read",
    "file_save": "<= 2x nbformat.write",
    "execute": "<= 0.25x jupyter execute",
    "nbclient": "<= 0.3x python3",
    "gateway_roundtrip": "<= 2x a plain WebSocket client",
    "mcp_execute": "<= 3x session.run",
    "stream_latency": "<= 5 ms",
    "tqdm": "<= 1.5x jc",
    "widget_doc": "not one entry per update: < 1 B per extra update",
    "scale": ">= 0.8x jc executions/s; daemon CPU per execution <= 1.2x from 1 to 16",
    "convergence": "nothing lost; <= 1.2x the floor",
}


# --------------------------------------------------------------------------------------------
# small utilities
# --------------------------------------------------------------------------------------------

class BenchTimeout(Exception):
    """A measured operation did not finish within its watchdog."""


@contextlib.contextmanager
def watchdog(seconds: float, what: str) -> Iterator[None]:
    """Raise :class:`BenchTimeout` in the main thread after ``seconds`` (SIGALRM).

    The sync runtimed API blocks on a future without a timeout; a signal interrupts
    that wait, so a hung daemon cannot hang the harness. Nesting restores the outer timer.
    """
    def fire(signum: int, frame: Any) -> None:
        raise BenchTimeout(f"{what}: no result after {seconds:g} s")

    outer_handler = signal.signal(signal.SIGALRM, fire)
    outer_left, _ = signal.getitimer(signal.ITIMER_REAL)
    started = time.monotonic()
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, outer_handler)
        if outer_left:
            signal.setitimer(signal.ITIMER_REAL, max(0.001, outer_left - (time.monotonic() - started)))


def quantile(values: list[float], q: float) -> float:
    """Linear-interpolated quantile (numpy's default)."""
    data = sorted(values)
    if not data:
        return float("nan")
    pos = q * (len(data) - 1)
    lo = int(pos)
    hi = min(lo + 1, len(data) - 1)
    return data[lo] + (data[hi] - data[lo]) * (pos - lo)


def summary(values: list[float]) -> dict[str, Any]:
    return {
        "n": len(values),
        "median": statistics.median(values) if values else None,
        "p95": quantile(values, 0.95) if values else None,
        "min": min(values) if values else None,
        "max": max(values) if values else None,
        "samples": [round(v, 6) for v in values],
    }


def blocks(values: list[float], size: int = 25) -> list[float]:
    return [statistics.median(values[i:i + size]) for i in range(0, len(values) - size + 1, size)]


def fmt_time(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if seconds < 0.01:
        return f"{seconds * 1000:.2f} ms"
    if seconds < 1:
        return f"{seconds * 1000:.0f} ms"
    return f"{seconds:.2f} s"


def fmt_mb(nbytes: float | None) -> str:
    return "-" if nbytes is None else f"{nbytes / 2**20:.1f} MB"


def rss_bytes(pid: int) -> int | None:
    """VmRSS of ``pid`` from /proc, in bytes."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def _proc_table() -> dict[int, tuple[int, str]]:
    """pid -> (ppid, cmdline) for every process we can read."""
    table: dict[int, tuple[int, str]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
            cmd = Path(f"/proc/{entry}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except (OSError, ValueError, IndexError):
            continue
        table[int(entry)] = (ppid, cmd)
    return table


def descendants(pid: int) -> list[tuple[int, str]]:
    table = _proc_table()
    out: list[tuple[int, str]] = []
    frontier = [pid]
    while frontier:
        parent = frontier.pop()
        for child, (ppid, cmd) in table.items():
            if ppid == parent:
                out.append((child, cmd))
                frontier.append(child)
    return out


def kernel_pids(parent: int) -> list[int]:
    return [p for p, cmd in descendants(parent) if "ipykernel_launcher" in cmd]


def kill_leftovers(marker: str) -> list[int]:
    """SIGKILL processes whose command line mentions our private temp root (kernels, uv)."""
    killed = []
    for pid, (_, cmd) in _proc_table().items():
        if pid != os.getpid() and marker in cmd:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
                killed.append(pid)
    return killed


def git_commit() -> str:
    """``git rev-parse --short HEAD`` (+dirty); RUNTIMED_BENCH_COMMIT overrides it for a snapshot."""
    if os.environ.get("RUNTIMED_BENCH_COMMIT"):
        return os.environ["RUNTIMED_BENCH_COMMIT"]
    try:
        sha = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True,
                             text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO,
                               capture_output=True, text=True, check=False).stdout.strip()
        return sha + ("+dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def find_uv() -> str:
    try:
        from uv import find_uv_bin

        return find_uv_bin()
    except (ImportError, FileNotFoundError):
        found = shutil.which("uv")
        if not found:
            raise RuntimeError("uv not found on PATH") from None
        return found


def build_env(path: Path, env: dict[str, str] | None = None) -> float:
    """Build a venv with ipykernel the way the uv pool does; return seconds taken."""
    uv_bin = find_uv()
    started = time.perf_counter()
    env = {**os.environ, **(env or {})}
    for argv in (
        [uv_bin, "venv", "--quiet", "--relocatable", "--no-python-downloads", "--python", sys.executable,
         str(path)],
        [uv_bin, "pip", "install", "--quiet", "--no-python-downloads", "--python", str(path / "bin" / "python"),
         "--compile-bytecode", *POOL_PACKAGES],
        [str(path / "bin" / "python"), "-c", POOL_WARM_UP],
    ):
        proc = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=900, check=False)
        if proc.returncode != 0:
            raise RuntimeError(f"{' '.join(argv[:3])} failed ({proc.returncode}):\n{proc.stderr[-2000:]}")
    return time.perf_counter() - started


def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------------------------
# the runtimed side: isolated daemons
# --------------------------------------------------------------------------------------------

class Bench:
    """Run-wide state: temp root, baseline env, options, and everything to clean up."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.quick: bool = args.quick
        self.root = Path(tempfile.mkdtemp(prefix="runtimed-bench-"))
        self.daemons: list[Any] = []
        self.kernel_managers: list[Any] = []
        self.baseline_env = self.root / "baseline-env"
        self.baseline_python = self.baseline_env / "bin" / "python"
        self.specs_dir = self.root / "kernelspecs"
        self.baseline_build_secs: float | None = None
        self.failure_diagnostics: dict[str, Any] = {}
        self.cache_was_warm = False
        self.kernel_log: Any = None
        # A uv cache of the bench's own: uv hard-links env files to its cache, so anything that
        # writes into an env's files (a test breaking ipykernel on purpose, say) changes the shared
        # cache too. Its first use is a cold build; after that it is the warm cache.
        cache_home = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
        self.uv_cache = Path(args.uv_cache_dir or cache_home / "runtimed-bench" / "uv")
        self.uv_env = {"UV_CACHE_DIR": str(self.uv_cache)}

    # -- runtimed -------------------------------------------------------------------------------
    @contextlib.contextmanager
    def daemon(self, name: str, *, uv_pool_size: int = 2, env: dict[str, str] | None = None,
               wait: bool = True, hot_kernels: int | None = None,
               conda_pool_size: int = 0) -> Iterator[Any]:
        """A fresh isolated daemon for one scenario; stopped (and its kernels reaped) afterwards."""
        from runtimed.pytest_plugin import DaemonProcess

        root = self.root / f"daemon-{name}-{uuid.uuid4().hex[:6]}"
        options: dict[str, Any] = {}
        if "hot_kernels" in inspect.signature(DaemonProcess.__init__).parameters:
            options["hot_kernels"] = self.args.hot_kernels if hot_kernels is None else hot_kernels
        elif self.args.hot_kernels:
            raise RuntimeError("--hot-kernels: this runtimed has no hot kernels")
        # Only the uv pool (unless asked): no conda builds competing for the 2 cores.
        extra = ["--log-level", self.args.daemon_log_level, "--conda-pool-size", str(conda_pool_size)]
        if "pool_sizes" in inspect.signature(DaemonProcess.__init__).parameters:
            options["pool_sizes"] = {"uv": uv_pool_size, "conda": conda_pool_size}
        else:  # a snapshot from before pools declared their own settings
            options["uv_pool_size"] = uv_pool_size
        daemon = DaemonProcess(root, keep_alive_secs=1.0, extra_args=extra,
                               env={**self.uv_env, **(env or {})}, **options)
        self.daemons.append(daemon)
        try:
            with watchdog(90, "daemon start"):
                daemon.start()
            if wait and uv_pool_size:
                self.wait_pool(daemon, uv_pool_size)
            yield daemon
        except Exception:
            # while the daemon still runs: its log tail and Python stacks (for hangs)
            self.failure_diagnostics = daemon_diagnostics(daemon)
            raise
        finally:
            self.stop_daemon(daemon)
            if self.failure_diagnostics:  # keep the whole log of a daemon that failed
                self.failure_diagnostics["daemon_log"] = self.save_log(daemon, name)

    def save_log(self, daemon: Any, name: str) -> str | None:
        """Copy a daemon's log next to the JSON results (the temp root is deleted at the end)."""
        logs = Path(self.args.out).parent / "logs"
        target = logs / f"{time.strftime('%Y%m%d-%H%M%S')}-{name}-daemon.log"
        try:
            logs.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(daemon.log_path, target)
        except OSError:
            return None
        return str(target)

    def stop_daemon(self, daemon: Any) -> None:
        with contextlib.suppress(Exception), watchdog(40, "daemon stop"):
            daemon.stop()
        if daemon.process is not None:  # the watchdog fired: kill its process group
            with contextlib.suppress(Exception):
                os.killpg(daemon.process.pid, signal.SIGKILL)
            daemon.process = None
        kill_leftovers(str(daemon.root))
        with contextlib.suppress(ValueError):
            self.daemons.remove(daemon)

    def wait_pool(self, daemon: Any, available: int, timeout: float = 300.0) -> None:
        """Until the uv pool holds ``available`` envs, builds nothing, and the hot kernels are back."""
        deadline = time.monotonic() + timeout
        client = daemon.client()
        while True:
            status = client.status()
            warming = any(v for k, v in status.items() if k.endswith("_warming") and isinstance(v, int))
            hot_ready = status.get("hot_available", 0) >= self.args.hot_kernels
            if status.get("uv_available", 0) >= available and not warming and hot_ready:
                return
            if time.monotonic() > deadline:
                raise BenchTimeout(f"uv pool did not reach {available} within {timeout:g} s: {status}")
            time.sleep(0.05)

    def wait_hot(self, daemon: Any, timeout: float = 120.0) -> None:
        """Until the daemon has a hot kernel ready (and its pool is back at its target)."""
        deadline = time.monotonic() + timeout
        client = daemon.client()
        while client.status().get("hot_available", 0) < 1 or client.status().get("uv_warming"):
            if time.monotonic() > deadline:
                raise BenchTimeout(f"no hot kernel within {timeout:g} s: {client.status()}")
            time.sleep(0.05)

    # -- jupyter_client -------------------------------------------------------------------------
    def prepare_baseline(self) -> None:
        """The env the jupyter_client kernels run in: same interpreter, same ipykernel as the pool."""
        log(f"building the baseline env (uv venv + {' '.join(POOL_PACKAGES)}) in {self.baseline_env}")
        self.cache_was_warm = self.uv_cache.is_dir() and any(self.uv_cache.iterdir())
        if not self.cache_was_warm:
            log(f"first use of the bench's uv cache {self.uv_cache}: this build downloads packages")
        self.baseline_build_secs = build_env(self.baseline_env, env=self.uv_env)
        self.kernelspec(KERNEL_NAME, self.baseline_python)

    def kernelspec(self, name: str, python: str | Path) -> str:
        """A kernelspec ``name`` of ``python`` (an env's), started as the baseline's is."""
        spec = self.specs_dir / name
        spec.mkdir(parents=True, exist_ok=True)
        (spec / "kernel.json").write_text(json.dumps({
            # as runtimed's python kernels (and nbclient's): IPython's history in memory
            "argv": [str(python), "-m", "ipykernel_launcher", "-f", "{connection_file}",
                     "--HistoryManager.hist_file=:memory:"],
            "display_name": f"bench {name}", "language": "python",
        }))
        return name

    def jc_start(self, kernel_name: str = KERNEL_NAME) -> tuple[Any, Any]:
        """Start a jupyter_client kernel (in the baseline env unless ``kernel_name`` names another
        :meth:`kernelspec`); return (manager, ready blocking client)."""
        from jupyter_client.kernelspec import KernelSpecManager
        from jupyter_client.manager import KernelManager

        ksm = KernelSpecManager(kernel_dirs=[str(self.specs_dir)])
        km = KernelManager(kernel_name=kernel_name, kernel_spec_manager=ksm,
                           connection_file=str(self.root / f"jc-kernel-{uuid.uuid4().hex[:8]}.json"))
        self.kernel_managers.append(km)
        # like runtimed, keep the kernel's own output in a file rather than on our terminal
        # (one handle for the whole run: jupyter_client reuses it when it restarts the kernel)
        if self.kernel_log is None:
            self.kernel_log = open(self.root / "jc-kernels.log", "ab")  # noqa: SIM115
        km.start_kernel(stdout=self.kernel_log, stderr=self.kernel_log)
        kc = km.client()
        kc.start_channels()
        kc.wait_for_ready(timeout=60)
        return km, kc

    def jc_stop(self, km: Any, kc: Any | None = None) -> None:
        with contextlib.suppress(Exception):
            if kc is not None:
                kc.stop_channels()
        with contextlib.suppress(Exception), watchdog(20, "jupyter_client shutdown"):
            km.shutdown_kernel(now=True)
        with contextlib.suppress(ValueError):
            self.kernel_managers.remove(km)

    @contextlib.contextmanager
    def jc_kernel(self, kernel_name: str = KERNEL_NAME) -> Iterator[tuple[Any, Any]]:
        km = kc = None
        try:
            with watchdog(90, "jupyter_client kernel start"):
                km, kc = self.jc_start(kernel_name)
            yield km, kc
        finally:
            if km is not None:
                self.jc_stop(km, kc)

    def cleanup(self) -> None:
        for km in list(self.kernel_managers):
            self.jc_stop(km)
        for daemon in list(self.daemons):
            self.stop_daemon(daemon)
        kill_leftovers(str(self.root))
        if self.kernel_log is not None:
            self.kernel_log.close()
        if not self.args.keep:
            shutil.rmtree(self.root, ignore_errors=True)
        else:
            log(f"kept {self.root}")


@contextlib.contextmanager
def jc_second_client(km: Any) -> Iterator[Any]:
    """Another client of a kernel, ready, as another process would make it.

    (A second km.client() in the same process never received IOPub here; a client built
    from the connection file does.)"""
    from jupyter_client.blocking import BlockingKernelClient

    kc = BlockingKernelClient(connection_file=km.connection_file)
    kc.load_connection_file()
    kc.start_channels()
    try:
        kc.wait_for_ready(timeout=30)
        yield kc
    finally:
        kc.stop_channels()


def jc_execute(kc: Any, code: str, timeout: float = 60) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """execute_interactive: returns after the reply and IOPub idle; (reply content, iopub messages)."""
    msgs: list[dict[str, Any]] = []
    reply = kc.execute_interactive(code, timeout=timeout, output_hook=msgs.append, allow_stdin=False)
    return reply["content"], msgs


def jc_stdout(msgs: list[dict[str, Any]]) -> str:
    return "".join(m["content"]["text"] for m in msgs
                   if m["msg_type"] == "stream" and m["content"].get("name") == "stdout")


def jc_result_text(msgs: list[dict[str, Any]]) -> str | None:
    for m in msgs:
        if m["msg_type"] == "execute_result":
            return m["content"]["data"].get("text/plain")
    return None


def rt_result_text(result: Any) -> str | None:
    for out in result.display_data:
        if out.output_type == "execute_result":
            return (out.data or {}).get("text/plain")
    return None


def rt_check(result: Any, what: str) -> None:
    if not result.success:
        err = result.error
        detail = f"{err.ename}: {err.evalue}" if err else (result.failure or "no error output")
        raise RuntimeError(f"{what} did not succeed: {detail}")


def close_session(session: Any) -> None:
    """Shut the kernel down and disconnect, never hanging the harness."""
    with contextlib.suppress(Exception), watchdog(10, "session close"):
        session.__exit__(None, None, None)


def daemon_diagnostics(daemon: Any | None) -> dict[str, Any]:
    """Daemon log tail and, when py-spy exists, its Python stacks: attached to errors."""
    if daemon is None:
        return {}
    info: dict[str, Any] = {"daemon_log_tail": daemon.log()[-4000:]}
    spy = shutil.which("py-spy")
    if spy and daemon.process is not None and daemon.process.poll() is None:
        with contextlib.suppress(Exception):
            info["daemon_stacks"] = subprocess.run(
                [spy, "dump", "--pid", str(daemon.process.pid)], capture_output=True, text=True,
                timeout=20, check=False,
            ).stdout[-6000:]
    return info


# --------------------------------------------------------------------------------------------
# scenarios: each returns {"runtimed": {...}, "jupyter_client": {...}} (a side may hold "error")
# --------------------------------------------------------------------------------------------

class Side:
    """Runs one side of a scenario, recording its error (with traceback) instead of raising."""

    def __init__(self, result: dict[str, Any], name: str, bench: Bench) -> None:
        self.result = result
        self.name = name
        self.bench = bench
        self.data: dict[str, Any] = result.setdefault(name, {})

    def __enter__(self) -> dict[str, Any]:
        log(f"  {self.name} ...")
        self.bench.failure_diagnostics = {}
        return self.data

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: types.TracebackType | None) -> bool:
        if exc is None:
            return False
        if isinstance(exc, KeyboardInterrupt):
            return False
        self.data["error"] = f"{type(exc).__name__}: {exc}"
        self.data["traceback"] = "".join(traceback.format_exception(exc_type, exc, tb))
        self.data.update(self.bench.failure_diagnostics)
        self.bench.failure_diagnostics = {}
        log(f"  {self.name} FAILED: {self.data['error']}")
        return True


def scenario_start(b: Bench) -> dict[str, Any]:
    """New session + start_kernel + run('1+1') with a full, quiet pool; vs a fresh jupyter_client kernel.

    The two sides alternate run by run, so load from other processes hits both alike.
    """
    runs = 3 if b.quick else 5
    warm = 1
    res: dict[str, Any] = {"runs": runs, "warmups": warm, "interleaved": True}
    version_code = "import ipykernel, sys; print(ipykernel.__version__); print(sys.version)"
    jc_totals: list[float] = []
    rt_totals: list[float] = []
    phases: dict[str, list[float]] = {"connect": [], "start_kernel": [], "run_1+1": []}

    def jc_once(out: dict[str, Any], i: int) -> None:
        km = kc = None
        try:
            with watchdog(90, "jupyter_client start-to-result"):
                t0 = time.perf_counter()
                km, kc = b.jc_start()
                _, msgs = jc_execute(kc, "1+1")
                dt = time.perf_counter() - t0
            if jc_result_text(msgs) != "2":
                raise RuntimeError(f"unexpected result {jc_result_text(msgs)!r}")
            if i == 0:
                _, msgs = jc_execute(kc, version_code)
                out["kernel"] = jc_stdout(msgs).strip()
        finally:
            if km is not None:
                b.jc_stop(km, kc)
        if i >= warm:
            jc_totals.append(dt)

    def rt_once(out: dict[str, Any], daemon: Any, i: int) -> None:
        b.wait_pool(daemon, 2)
        session = None
        try:
            with watchdog(90, "runtimed start-to-result"):
                t0 = time.perf_counter()
                session = daemon.session()
                session.connect()
                t1 = time.perf_counter()
                session.start_kernel()
                t2 = time.perf_counter()
                result = session.run("1+1")
                t3 = time.perf_counter()
            rt_check(result, "1+1")
            if rt_result_text(result) != "2":
                raise RuntimeError(f"unexpected result {rt_result_text(result)!r}")
            if i == 0:
                with watchdog(30, "version check"):
                    out["kernel"] = session.run(version_code).stdout.strip()
                out["env_source"] = session.env_source
        finally:
            if session is not None:
                close_session(session)
        if i >= warm:
            rt_totals.append(t3 - t0)
            for key, value in zip(phases, (t1 - t0, t2 - t1, t3 - t2)):
                phases[key].append(value)

    jc_out = res.setdefault("jupyter_client", {})
    rt_side = Side(res, "runtimed", b)
    with rt_side as rt_out, b.daemon("start", uv_pool_size=2) as daemon:
        for i in range(warm + runs):
            if "error" not in jc_out:
                with Side(res, "jupyter_client", b):
                    jc_once(jc_out, i)
            rt_once(rt_out, daemon, i)
    if rt_totals:
        rt_out["total"] = summary(rt_totals)
        rt_out["phases_median"] = {k: statistics.median(v) for k, v in phases.items() if v}
    if jc_totals:
        jc_out["total"] = summary(jc_totals)
    if "error" not in jc_out and not jc_totals:  # the runtimed daemon never came up: run jc alone
        with Side(res, "jupyter_client", b):
            for i in range(warm + runs):
                jc_once(jc_out, i)
            jc_out["total"] = summary(jc_totals)
    return res


def _roundtrip_series(fn: Callable[[], None], n: int, budget: float, *, warm: int,
                      what: str) -> tuple[list[float], bool]:
    """``warm`` discarded calls of ``fn``, then ``n`` timed ones (fewer, and truncated True, once
    ``budget`` seconds are spent), under a watchdog naming ``what``."""
    times: list[float] = []
    with watchdog(budget + 60, what):
        for _ in range(warm):
            fn()
        deadline = time.monotonic() + budget
        for _ in range(n):
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
            if time.monotonic() > deadline:
                return times, True
    return times, False


def scenario_roundtrip(b: Bench) -> dict[str, Any]:
    """300 consecutive `x=1` runs in one notebook: p50/p95 and per-25 block medians; then
    2,000 executions of one cell (does the cost stay flat over a long session?)."""
    n = 300
    n_exec = 100 if b.quick else 2000
    warm = 5
    budget = 120.0
    res: dict[str, Any] = {"runs": n, "warmups": warm}

    with Side(res, "jupyter_client", b) as out, b.jc_kernel() as (_km, kc):
        def once() -> None:
            reply, _ = jc_execute(kc, "x=1")
            if reply["status"] != "ok":
                raise RuntimeError(f"x=1 failed: {reply}")
        times, truncated = _roundtrip_series(once, n, budget, warm=warm, what="jupyter_client round trips")
        out["run"] = {**summary(times), "blocks_of_25": blocks(times), "truncated": truncated}

    side = Side(res, "runtimed", b)
    with side as out, b.daemon("roundtrip", uv_pool_size=2) as daemon:
        session = daemon.session()
        try:
            with watchdog(90, "start_kernel"):
                session.start_kernel()
                b.wait_pool(daemon, 2)

            def once() -> None:
                rt_check(session.run("x=1"), "x=1")
            times, truncated = _roundtrip_series(once, n, budget, warm=warm,
                                                 what="runtimed session.run round trips")
            out["run"] = {**summary(times), "blocks_of_25": blocks(times), "truncated": truncated,
                          "what": "session.run('x=1'): create_cell + execute_cell, a new cell each time"}
        finally:
            close_session(session)

        # The same on one pre-created cell, in a fresh notebook (executions pile up, cells do not).
        b.wait_pool(daemon, 2)
        session = daemon.session()
        try:
            with watchdog(90, "start_kernel"):
                session.start_kernel()
                cell = session.create_cell("x=1")
                b.wait_pool(daemon, 2)

            def once_exec() -> None:
                rt_check(session.execute_cell(cell), "x=1")
            times, truncated = _roundtrip_series(once_exec, n_exec, budget, warm=warm,
                                                 what="runtimed execute_cell round trips")
            # p50/p95 over the first 300 (comparable with session.run), blocks over all of them
            out["execute_cell"] = {**summary(times[:n]), "blocks_of_25": blocks(times),
                                   "blocks_of_250": blocks(times, 250), "truncated": truncated,
                                   "what": f"execute_cell(cell) on one pre-created cell, {len(times)} times "
                                           f"(p50/p95 over the first {min(n, len(times))})"}
        finally:
            close_session(session)
    return res


def _check_lines(text: str, n: int) -> dict[str, Any]:
    lines = text.splitlines()
    expected = [str(i) for i in range(n)]
    complete = lines == expected
    info: dict[str, Any] = {"lines_received": len(lines), "complete": complete}
    if not complete:
        first_bad = next((i for i, (a, e) in enumerate(zip(lines, expected)) if a != e), min(len(lines), n))
        info["first_mismatch_line"] = first_bad
    return info


PAYLOAD = 10_000_000
DISPLAY_CODE = f"from IPython.display import display; display({{'text/plain': 'x' * {PAYLOAD}}}, raw=True)"


def scenario_output(b: Bench) -> dict[str, Any]:
    """10k and 100k printed lines, and a 10 MB display_data: time and completeness."""
    reps = {"lines_10k": 2 if b.quick else 5, "lines_100k": 1 if b.quick else 3, "display_10mb": 1 if b.quick else 3}
    res: dict[str, Any] = {"repetitions": reps, "warmups": 1}
    cases = [("lines_10k", 10_000), ("lines_100k", 100_000)]

    with Side(res, "jupyter_client", b) as out, b.jc_kernel() as (_km, kc):
        jc_execute(kc, "for i in range(1000): print(i)")  # warm-up
        for key, n in cases:
            times, checks = [], []
            for _ in range(reps[key]):
                with watchdog(300, f"jupyter_client {key}"):
                    t0 = time.perf_counter()
                    _, msgs = jc_execute(kc, f"for i in range({n}): print(i)", timeout=280)
                    times.append(time.perf_counter() - t0)
                checks.append(_check_lines(jc_stdout(msgs), n))
            out[key] = {**summary(times), "complete": all(c["complete"] for c in checks), "checks": checks}
        times, exact = [], []
        for _ in range(reps["display_10mb"]):
            with watchdog(300, "jupyter_client 10 MB display"):
                t0 = time.perf_counter()
                _, msgs = jc_execute(kc, DISPLAY_CODE, timeout=280)
                times.append(time.perf_counter() - t0)
            data = [m["content"]["data"].get("text/plain") for m in msgs if m["msg_type"] == "display_data"]
            exact.append(len(data) == 1 and data[0] == "x" * PAYLOAD)
        out["display_10mb"] = {**summary(times), "complete": all(exact)}

    side = Side(res, "runtimed", b)
    with side as out, b.daemon("output", uv_pool_size=1) as daemon:
        session = daemon.session()
        try:
            with watchdog(90, "start_kernel"):
                session.start_kernel()
                b.wait_pool(daemon, 1)
                session.run("for i in range(1000): print(i)")  # warm-up
            for key, n in cases:
                times, checks = [], []
                for _ in range(reps[key]):
                    try:
                        with watchdog(300, f"runtimed {key}"):
                            t0 = time.perf_counter()
                            result = session.run(f"for i in range({n}): print(i)", timeout_secs=280)
                            times.append(time.perf_counter() - t0)
                        rt_check(result, key)
                        checks.append(_check_lines(result.stdout, n))
                    except Exception as exc:  # noqa: BLE001 (keep going with the other cases)
                        out[key] = {"error": f"{type(exc).__name__}: {exc}",
                                    "traceback": traceback.format_exc(), **daemon_diagnostics(daemon)}
                        break
                else:
                    out[key] = {**summary(times), "complete": all(c["complete"] for c in checks),
                                "checks": checks}
            times, exact, sizes = [], [], []
            try:
                for _ in range(reps["display_10mb"]):
                    with watchdog(300, "runtimed 10 MB display"):
                        t0 = time.perf_counter()
                        result = session.run(DISPLAY_CODE, timeout_secs=280)
                        times.append(time.perf_counter() - t0)
                    rt_check(result, "10 MB display")
                    data = [(o.data or {}).get("text/plain") for o in result.display_data]
                    sizes.append([len(d) if isinstance(d, str) else repr(type(d)) for d in data])
                    exact.append(len(data) == 1 and data[0] == "x" * PAYLOAD)
                out["display_10mb"] = {**summary(times), "complete": all(exact), "received_sizes": sizes}
            except Exception as exc:  # noqa: BLE001
                out["display_10mb"] = {"error": f"{type(exc).__name__}: {exc}",
                                       "traceback": traceback.format_exc(), **daemon_diagnostics(daemon)}
        finally:
            close_session(session)
    return res


def scenario_multiclient(b: Bench) -> dict[str, Any]:
    """Session A edits a cell's source; time until session B's replica shows it."""
    edits = 30 if b.quick else 50
    warm = 5
    res: dict[str, Any] = {"edits": edits, "warmups": warm}

    # jupyter_client has no shared document: the nearest thing is a second client seeing what
    # the first did, i.e. client B receiving client A's execute_input on IOPub (through the kernel).
    with Side(res, "jupyter_client", b) as out, b.jc_kernel() as (km, kc_a):
        with jc_second_client(km) as kc_b:
            while True:  # drain B's IOPub
                try:
                    kc_b.get_iopub_msg(timeout=0.2)
                except Exception:  # noqa: BLE001
                    break
            times = []
            for i in range(warm + edits):
                code = f"# edit {i} {uuid.uuid4().hex}"
                with watchdog(30, "jupyter_client propagation"):
                    t0 = time.perf_counter()
                    kc_a.execute(code)
                    while True:
                        msg = kc_b.get_iopub_msg(timeout=20)
                        if msg["msg_type"] == "execute_input" and msg["content"]["code"] == code:
                            break
                    dt = time.perf_counter() - t0
                    # let the execution finish on both clients before the next edit
                    kc_a.get_shell_msg(timeout=20)
                    while True:
                        msg = kc_b.get_iopub_msg(timeout=20)
                        if msg["msg_type"] == "status" and msg["content"]["execution_state"] == "idle":
                            break
                if i >= warm:
                    times.append(dt)
            out["propagation"] = {**summary(times),
                                  "what": "client A execute() -> client B receives execute_input on IOPub"}

    side = Side(res, "runtimed", b)
    with side as out, b.daemon("multiclient", uv_pool_size=0) as daemon:
        notebook_id = f"bench-shared-{uuid.uuid4().hex[:8]}"
        a = daemon.session(notebook_id)
        bb = daemon.session(notebook_id)
        try:
            with watchdog(30, "connect A and B"):
                a.connect()
                cell = a.create_cell("x = 0")
                bb.connect()
                while not any(c.id == cell for c in bb.get_cells()):
                    pass
            times = []
            for i in range(warm + edits):
                source = f"x = {i}  # {uuid.uuid4().hex}"
                with watchdog(30, "runtimed propagation A->B"):
                    t0 = time.perf_counter()
                    a.set_source(cell, source)
                    while bb.get_cell(cell).source != source:
                        pass
                    dt = time.perf_counter() - t0
                if i >= warm:
                    times.append(dt)
            out["propagation"] = {**summary(times),
                                  "what": "A.set_source -> B.get_cell(id).source equal (spin, no sleep)"}
        finally:
            close_session(bb)
            close_session(a)
    return res


def scenario_bigdoc(b: Bench) -> dict[str, Any]:
    """A 1,000-cell notebook: time for a second client to connect and see all cells."""
    cells = 1000
    joins = 3 if b.quick else 5
    res: dict[str, Any] = {"cells": cells, "joins": joins, "warmups": 1}
    res["jupyter_client"] = {"note": "n/a: jupyter_client has no shared notebook document"}

    side = Side(res, "runtimed", b)
    with side as out, b.daemon("bigdoc", uv_pool_size=0) as daemon:
        notebook_id = f"bench-big-{uuid.uuid4().hex[:8]}"
        a = daemon.session(notebook_id)
        try:
            with watchdog(300, "create 1000 cells"):
                a.connect()
                t0 = time.perf_counter()
                block_start, per_100 = t0, []
                for i in range(cells):
                    a.create_cell(f"x_{i} = {i}\nprint(x_{i} * 2)  # cell {i}")
                    if (i + 1) % 100 == 0:
                        now = time.perf_counter()
                        per_100.append(round(now - block_start, 4))
                        block_start = now
                out["create_cells_secs"] = time.perf_counter() - t0
                out["create_blocks_of_100_secs"] = per_100
                # make sure the daemon holds all of them before timing joins
                probe = daemon.session(notebook_id)
                probe.connect()
                while len(probe.get_cells()) < cells:
                    time.sleep(0.01)
                out["create_until_daemon_has_all_secs"] = time.perf_counter() - t0
                close_session(probe)
            totals, connects = [], []
            for i in range(1 + joins):
                joiner = None
                try:
                    with watchdog(120, "second client join"):
                        t0 = time.perf_counter()
                        joiner = daemon.session(notebook_id)
                        joiner.connect()
                        t1 = time.perf_counter()
                        while len(joiner.get_cells()) < cells:
                            pass
                        t2 = time.perf_counter()
                finally:
                    if joiner is not None:
                        close_session(joiner)
                if i >= 1:
                    totals.append(t2 - t0)
                    connects.append(t1 - t0)
            out["join"] = summary(totals)
            out["connect_median"] = statistics.median(connects)
            with watchdog(60, "get_cells timing"):
                t0 = time.perf_counter()
                a.get_cells()
                out["get_cells_1000_secs"] = time.perf_counter() - t0
        finally:
            close_session(a)
    return res


def _big_notebook(path: Path, cells: int) -> None:
    """A notebook with text, stream and image outputs, written by nbformat."""
    import base64

    import nbformat
    from nbformat import v4

    png = base64.b64encode(os.urandom(20000)).decode()
    nb = v4.new_notebook()
    for i in range(cells):
        if i % 5 == 0:
            nb.cells.append(v4.new_markdown_cell(f"# Section {i}\nSome *text* here, line two.\n"))
            continue
        cell = v4.new_code_cell(f"x{i} = {i}\nprint(x{i})\nfor j in range(3):\n    print(j)\n",
                                execution_count=i)
        cell.outputs = [v4.new_output("stream", name="stdout", text=f"{i}\n0\n1\n2\n")]
        if i % 10 == 1:
            cell.outputs.append(v4.new_output("display_data", data={"image/png": png,
                                                                    "text/plain": "<Figure>"}))
        nb.cells.append(cell)
    nbformat.write(nb, path)


def scenario_files(b: Bench) -> dict[str, Any]:
    """Notebook files: open and save a 1,000-cell notebook with outputs (vs nbformat.read and
    nbformat.write of it), and run a 10-cell notebook from the CLI (vs nbclient's `jupyter
    execute`, same kernel environment), on a warm daemon with a hot kernel."""
    import nbformat
    from nbformat import v4

    cells, runs = 1000, (3 if b.quick else 5)
    folder = b.root / "files"
    folder.mkdir()
    big = folder / "big.ipynb"
    _big_notebook(big, cells)
    small = folder / "small.ipynb"
    nb = v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nb.cells = [v4.new_code_cell(f"x{i} = {i} * 2\nprint(x{i})") for i in range(10)]
    nbformat.write(nb, small)
    res: dict[str, Any] = {"cells": cells, "runs": runs, "size_bytes": big.stat().st_size}

    jc = Side(res, "jupyter_client", b)  # the tools users pick: nbformat, nbclient
    with jc as out:
        reads, writes = [], []
        for _ in range(1 + runs):
            t0 = time.perf_counter()
            loaded = nbformat.read(big, as_version=4)
            reads.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            nbformat.write(loaded, folder / "nbformat-copy.ipynb")
            writes.append(time.perf_counter() - t0)
        out["open"], out["save"] = summary(reads[1:]), summary(writes[1:])
        jupyter_path = folder / "jupyter"
        jupyter_path.mkdir()
        (jupyter_path / "kernels").symlink_to(b.specs_dir)  # the baseline env's kernelspec
        env = {**os.environ, "JUPYTER_PATH": str(jupyter_path)}
        walls = []
        for _ in range(1 + runs):
            t0 = time.perf_counter()
            subprocess.run([str(Path(sys.executable).parent / "jupyter-execute"),
                            f"--kernel_name={KERNEL_NAME}", "--output", str(folder / "jc-out"),
                            str(small)], env=env, check=True, capture_output=True, timeout=120)
            assert nbformat.read(folder / "jc-out.ipynb", 4).cells[9].outputs, "nbclient ran it"
            walls.append(time.perf_counter() - t0)
        out["execute"] = summary(walls[1:])

    side = Side(res, "runtimed", b)
    with side as out, b.daemon("files", uv_pool_size=1, hot_kernels=1) as daemon:
        import runtimed

        opens, saves = [], []
        for i in range(1 + runs):
            copy = folder / f"big-{i}.ipynb"
            shutil.copyfile(big, copy)
            with watchdog(120, "open a 1,000-cell notebook"):
                t0 = time.perf_counter()
                s = runtimed.Session(path=copy, socket_path=daemon.socket_path)
                s.connect()
                while len(s.get_cells()) < cells:
                    pass
                opens.append(time.perf_counter() - t0)
            try:
                first = s.get_cells()[1].id
                s.set_source(first, f"x = {i}")
                with watchdog(60, "save"):
                    t0 = time.perf_counter()
                    s.save()
                    saves.append(time.perf_counter() - t0)
            finally:
                close_session(s)
        out["open"], out["save"] = summary(opens[1:]), summary(saves[1:])
        walls = []
        for i in range(1 + runs):
            b.wait_hot(daemon)
            t0 = time.perf_counter()
            subprocess.run([sys.executable, "-m", "runtimed", "execute", str(small), "-o",
                            str(folder / f"rt-out-{i}.ipynb"), "--socket", str(daemon.socket_path)],
                           check=True, capture_output=True, timeout=120)
            walls.append(time.perf_counter() - t0)
            assert nbformat.read(folder / f"rt-out-{i}.ipynb", 4).cells[9].outputs, "runtimed ran it"
        out["execute"] = summary(walls[1:])
    return res


#: A cell that prints the time it prints, every 20 ms: the receiver's clock minus the printed
#: one is the delay from the kernel's print to the caller (same machine, same clock).
STREAM_CELL = ("import time\nfor _ in range({n}):\n    time.sleep(0.02)\n"
               "    print(repr(time.time()), flush=True)\n")


def _stamped_lines(text: str, received: float) -> list[float]:
    return [received - float(line) for line in text.split()]


async def _mcp_roundtrips(daemon: Any, n: int, warm: int, budget: float) -> dict[str, Any]:
    """An MCP client (the SDK's, in this process) on `runtimed mcp` over stdio: execute_cell
    of one `x=1` cell, n times."""
    from mcp import ClientSession, StdioServerParameters
    from mcp.client.stdio import stdio_client

    params = StdioServerParameters(
        command=sys.executable, args=["-m", "runtimed", "mcp", "--socket", str(daemon.socket_path)],
        env=dict(os.environ))
    async with stdio_client(params) as (read, write), ClientSession(read, write) as client:
        await client.initialize()
        created = await client.call_tool("create_notebook", {})
        nb = created.structured_content["notebook_id"]
        cell = (await client.call_tool("create_cell", {"notebook_id": nb, "source": "x=1"})
                ).structured_content["cell_id"]
        times: list[float] = []
        deadline = time.monotonic() + budget
        for i in range(warm + n):
            t0 = time.perf_counter()
            result = await client.call_tool("execute_cell", {"notebook_id": nb, "cell_id": cell})
            elapsed = time.perf_counter() - t0
            if result.is_error or not result.structured_content["success"]:
                raise RuntimeError(f"MCP execute_cell failed: {result.content}")
            if i >= warm:
                times.append(elapsed)
            if time.monotonic() > deadline:
                break
        return {**summary(times), "what": "MCP call_tool('execute_cell') of one x=1 cell, stdio"}


def scenario_agents(b: Bench) -> dict[str, Any]:
    """Agents: an MCP `execute_cell` of x=1 (the SDK's client in this process, `runtimed mcp`
    over stdio) against `session.run('x=1')` on the same daemon (target <= 3x); and
    `session.stream()`: from the kernel's print to the caller (target <= 5 ms p50), against
    jupyter_client's IOPub message of the same print."""
    n = 40 if b.quick else 200
    lines = 50 if b.quick else 200
    warm, budget = 5, 120.0
    res: dict[str, Any] = {"runs": n, "stream_lines": lines}
    cell_code = STREAM_CELL.format(n=lines)

    with Side(res, "jupyter_client", b) as out, b.jc_kernel() as (_km, kc):
        delays: list[float] = []

        def hook(msg: dict[str, Any]) -> None:
            if msg["msg_type"] == "stream":
                delays.extend(_stamped_lines(msg["content"]["text"], time.time()))
        with watchdog(120, "jupyter_client stream"):
            kc.execute_interactive(cell_code, timeout=120, output_hook=hook, allow_stdin=False)
        out["stream_latency"] = {**summary(delays), "what": "iopub stream message, output_hook"}

    side = Side(res, "runtimed", b)
    with side as out, b.daemon("agents", uv_pool_size=2) as daemon:
        session = daemon.session()
        try:
            with watchdog(90, "start_kernel"):
                session.start_kernel()
                b.wait_pool(daemon, 2)

            def once() -> None:
                rt_check(session.run("x=1"), "x=1")
            times, _ = _roundtrip_series(once, n, budget, warm=warm, what="runtimed session.run round trips")
            out["run"] = {**summary(times), "what": "session.run('x=1')"}
            delays = []
            with watchdog(120, "runtimed stream"):
                for event in session.stream(session.create_cell(cell_code), timeout_secs=120):
                    if event.kind == "output" and event.output.output_type == "stream":
                        delays.extend(_stamped_lines(event.output.text, time.time()))
            if len(delays) != lines:
                raise RuntimeError(f"stream: {len(delays)} of {lines} lines arrived")
            out["stream_latency"] = {**summary(delays), "what": "session.stream() output events"}
        finally:
            close_session(session)
        b.wait_pool(daemon, 2)
        with watchdog(budget + 120, "MCP execute_cell round trips"):
            out["mcp_execute_cell"] = asyncio.run(_mcp_roundtrips(daemon, n, warm, budget))
    return res


TQDM_CELL = "from tqdm.notebook import trange\nfor i in trange({n}{options}):\n    pass"
COMM_TYPES = ("comm_open", "comm_msg", "comm_close")


def scenario_widgets(b: Bench) -> dict[str, Any]:
    """A `for i in tqdm.notebook.trange(10_000)` cell (tqdm's own pace: an update every 0.1 s),
    and the same with an update every step (mininterval=0), through runtimed (execute_cell) and
    through jupyter_client (execute_interactive, every comm message consumed by the client),
    alternating, in one env (runtimed's inline env with tqdm; the jupyter_client kernel runs
    its python); and the runtime-state document's size after 1,000 and 10,000 updates."""
    warm = 2
    cases = {"tqdm": TQDM_CELL.format(n=10_000, options=""),
             "tqdm_every_step": TQDM_CELL.format(n=10_000, options=", mininterval=0")}
    reps = {"tqdm": 30 if b.quick else 100, "tqdm_every_step": 5 if b.quick else 11}
    res: dict[str, Any] = {"repetitions": reps, "warmups": warm}
    rt_out = res.setdefault("runtimed", {})
    jc_out = res.setdefault("jupyter_client", {})
    side = Side(res, "runtimed", b)
    with side, b.daemon("widgets", uv_pool_size=1) as daemon:
        session = daemon.session()
        try:
            with watchdog(600, "an inline env with tqdm, and its kernel"):
                session.connect()
                session.add_dependency("tqdm")
                session.start_kernel()
                python = session.run("import sys; print(sys.executable)").stdout.strip()
            rt_out["env"] = jc_out["env"] = python
            cells = {name: session.create_cell(code) for name, code in cases.items()}
            with Side(res, "jupyter_client", b), b.jc_kernel(b.kernelspec("bench-tqdm", python)) as (_km, kc):
                times: dict[str, dict[str, list[float]]] = {c: {"rt": [], "jc": []} for c in cases}
                comm_msgs: dict[str, int] = {}
                for name, code in cases.items():
                    for i in range(warm + reps[name]):
                        with watchdog(120, f"runtimed {name}"):
                            t0 = time.perf_counter()
                            rt_check(session.execute_cell(cells[name], timeout_secs=120), name)
                            rt_dt = time.perf_counter() - t0
                        seen: list[str] = []
                        with watchdog(120, f"jupyter_client {name}"):
                            t0 = time.perf_counter()
                            reply = kc.execute_interactive(code, timeout=120, allow_stdin=False,
                                                           output_hook=lambda m: seen.append(m["msg_type"]))
                            jc_dt = time.perf_counter() - t0
                        if reply["content"]["status"] != "ok":
                            raise RuntimeError(f"jupyter_client {name}: {reply['content']}")
                        comm_msgs[name] = sum(t in COMM_TYPES for t in seen)
                        if i >= warm:
                            times[name]["rt"].append(rt_dt)
                            times[name]["jc"].append(jc_dt)
                for name in cases:
                    what = f"{cases[name]!r}, {comm_msgs[name]} comm messages per run"
                    rt_out[name] = {**summary(times[name]["rt"]), "what": "execute_cell of " + what}
                    jc_out[name] = {**summary(times[name]["jc"]), "what": "execute_interactive of " + what}
        finally:
            close_session(session)
        sizes = {}
        for n in (1_000, 10_000):  # each in a notebook of its own (a room, a kernel)
            fresh = daemon.session()
            try:
                with watchdog(300, f"document size after {n} updates"):
                    fresh.connect()
                    fresh.add_dependency("tqdm")
                    rt_check(fresh.run(TQDM_CELL.format(n=n, options=", mininterval=0")), f"{n} updates")
                    state = fresh._async.state  # the runtime-state document, as this session has it
                    sizes[str(n)] = len(state.save())
            finally:
                close_session(fresh)
        rt_out["document_bytes"] = sizes  # updates -> bytes
    return res


JC_MEMORY_CHILD = r"""
import json, os, sys, time, warnings
warnings.filterwarnings("ignore")
sys.path.insert(0, {bench_dir!r})
from run import rss_bytes, kernel_pids
from jupyter_client.kernelspec import KernelSpecManager
from jupyter_client.manager import KernelManager
ksm = KernelSpecManager(kernel_dirs=[{specs!r}])
out = {{}}
def settle():
    time.sleep(1.0)
    return rss_bytes(os.getpid())
out["idle"] = settle()
kms = []
try:
    for i in range({n}):
        km = KernelManager(kernel_name={name!r}, kernel_spec_manager=ksm,
                           connection_file=os.path.join({root!r}, "jc-mem-%d.json" % i))
        kms.append(km)
        with open(os.path.join({root!r}, "jc-kernels.log"), "ab") as kernel_log:
            km.start_kernel(stdout=kernel_log, stderr=kernel_log)
        kc = km.client(); kc.start_channels(); kc.wait_for_ready(timeout=60)
        kc.execute_interactive("1+1", timeout=60, output_hook=lambda m: None)
        km._bench_kc = kc
        if i == 0:
            out["one"] = settle()
    out["ten"] = settle()
    out["kernels"] = [rss_bytes(p) for p in kernel_pids(os.getpid())]
finally:
    for km in kms:
        try:
            km._bench_kc.stop_channels()
        except Exception:
            pass
        try:
            km.shutdown_kernel(now=True)
        except Exception:
            pass
print(json.dumps(out))
"""


PNG_RAW_BYTES = 750_000  # ~1 MB once base64-encoded, as a kernel sends it
PNG_SETUP = ("import base64, random\n"
             "def make_png(seed):\n"
             "    raw = random.Random(seed).randbytes(%d)\n"
             "    return base64.b64encode(b'\\x89PNG\\r\\n\\x1a\\n' + raw).decode()" % PNG_RAW_BYTES)
PNG_SHOW = "from IPython.display import display\ndisplay({'image/png': png}, raw=True)"


def make_png(seed: int) -> str:
    """What the kernel's make_png(seed) returns (the same generator, the same interpreter)."""
    import random

    raw = random.Random(seed).randbytes(PNG_RAW_BYTES)
    return base64.b64encode(b"\x89PNG\r\n\x1a\n" + raw).decode()


class _PageSocket:
    """The live page's WebSocket, read in a thread: when each wanted image first shows in an
    update and its blob has been fetched (as the page's <img> fetches it)."""

    def __init__(self, url: str) -> None:
        import socket as socketlib
        from urllib.parse import urlsplit

        from wsproto import ConnectionType, WSConnection
        from wsproto.events import Request

        parts = urlsplit(url)
        self.base = f"http://{parts.hostname}:{parts.port}"
        self.token = dict(p.split("=", 1) for p in parts.query.split("&"))["token"]
        self.sock = socketlib.create_connection((parts.hostname, parts.port), timeout=60)
        self.ws = WSConnection(ConnectionType.CLIENT)
        self.sock.sendall(self.ws.send(Request(host=f"{parts.hostname}:{parts.port}",
                                               target=f"/ws/notebook?{parts.query}")))
        self.seen: dict[str, float] = {}  # blob sha -> when its bytes were in
        self.wanted: set[str] = set()
        self.cond = threading.Condition()
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self) -> None:
        import re
        import urllib.request

        from wsproto.events import TextMessage

        try:
            while True:
                data = self.sock.recv(1 << 20)
                if not data:
                    return
                self.ws.receive_data(data)
                for event in self.ws.events():
                    if not isinstance(event, TextMessage):
                        continue
                    with self.cond:
                        wanted = set(self.wanted)
                    for sha in set(re.findall(r"/blob/([0-9a-f]{64})", event.data)) & wanted:
                        body = urllib.request.urlopen(f"{self.base}/blob/{sha}?token={self.token}",
                                                      timeout=30).read()
                        if hashlib.sha256(body).hexdigest() == sha:
                            with self.cond:
                                self.seen[sha] = time.perf_counter()
                                self.cond.notify_all()
        except OSError:
            return

    def want(self, sha: str) -> None:
        with self.cond:
            self.wanted.add(sha)

    def wait(self, sha: str, timeout: float = 30) -> float:
        with self.cond:
            if not self.cond.wait_for(lambda: sha in self.seen, timeout):
                raise BenchTimeout("the viewer never showed the image")
            return self.seen[sha]

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.close()


def scenario_viewer(b: Bench) -> dict[str, Any]:
    """A 1 MB PNG displayed by session A: until session B has it byte-exact, and until an open
    viewer page has its update and the image's bytes. jupyter_client: a second client receiving
    the display_data on IOPub."""
    reps = 10 if b.quick else 25
    warm = 2
    res: dict[str, Any] = {"repetitions": reps, "warmups": warm, "png_bytes": PNG_RAW_BYTES}

    with Side(res, "jupyter_client", b) as out, b.jc_kernel() as (km, kc_a):
        with jc_second_client(km) as kc_b:
            jc_execute(kc_a, PNG_SETUP)
            times = []
            for i in range(warm + reps):
                jc_execute(kc_a, f"png = make_png({i})")
                with watchdog(60, "jupyter_client 1 MB PNG"):
                    t0 = time.perf_counter()
                    msg_id = kc_a.execute(PNG_SHOW)
                    while True:
                        msg = kc_b.get_iopub_msg(timeout=30)
                        if msg["msg_type"] == "display_data" and \
                                msg["parent_header"].get("msg_id") == msg_id:
                            break
                    dt = time.perf_counter() - t0
                    kc_a.get_shell_msg(timeout=30)
                if i >= warm:
                    times.append(dt)
            out["second_client"] = {**summary(times),
                                    "what": "A execute() -> client B receives the display_data on IOPub"}

    side = Side(res, "runtimed", b)
    with side as out, b.daemon("viewer", uv_pool_size=1) as daemon:
        notebook_id = f"bench-viewer-{uuid.uuid4().hex[:8]}"
        a, bb = daemon.session(notebook_id), daemon.session(notebook_id)
        page = None
        try:
            with watchdog(90, "kernel and sessions"):
                a.connect()
                a.start_kernel()
                rt_check(a.run(PNG_SETUP), "setup")
                cell = a.create_cell(PNG_SHOW)
                bb.connect()
                while not any(c.id == cell for c in bb.get_cells()):
                    time.sleep(0.001)
                page = _PageSocket(a.show(open_browser=False))
            second, viewer, exact = [], [], []
            for i in range(warm + reps):
                rt_check(a.run(f"png = make_png({i})"), "make_png")
                png = make_png(i)
                sha = hashlib.sha256(base64.b64decode(png)).hexdigest()
                page.want(sha)
                with watchdog(60, "runtimed 1 MB PNG"):
                    t0 = time.perf_counter()
                    a.queue_cell(cell)
                    while True:  # B, as a user's code would poll it
                        outputs = bb.get_cell(cell).outputs
                        shown = (outputs[0].data or {}).get("image/png") if outputs else None
                        if shown is not None and shown[:80] == png[:80]:
                            break
                        time.sleep(0.0005)
                    t_b = time.perf_counter() - t0
                    t_v = page.wait(sha) - t0
                exact.append(shown == png)
                if i >= warm:
                    second.append(t_b)
                    viewer.append(t_v)
            out["second_session"] = {**summary(second), "byte_exact": all(exact),
                                     "what": "A.queue_cell -> B.get_cell(id).outputs[0].data has it"}
            out["viewer"] = {**summary(viewer),
                             "what": "A.queue_cell -> a page update names its blob, and it is fetched"}
        finally:
            if page is not None:
                page.close()
            close_session(bb)
            close_session(a)
    return res


def scenario_memory(b: Bench) -> dict[str, Any]:
    """Daemon RSS idle, with 1 and with 10 kernels; kernel processes' own RSS separately."""
    n = 10
    res: dict[str, Any] = {"kernels": n}

    with Side(res, "jupyter_client", b) as out:
        code = JC_MEMORY_CHILD.format(bench_dir=str(BENCH_DIR), specs=str(b.specs_dir), n=n,
                                      name=KERNEL_NAME, root=str(b.root))
        proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                              check=False)
        if proc.returncode != 0:
            raise RuntimeError(f"memory child failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
        data = json.loads(proc.stdout.strip().splitlines()[-1])
        out.update({
            "what": "RSS of a python process importing jupyter_client and holding N KernelManagers + clients",
            "rss_idle": data["idle"], "rss_1_kernel": data["one"], f"rss_{n}_kernels": data["ten"],
            "per_kernel_overhead": (data["ten"] - data["idle"]) / n,
            "kernel_rss_median": statistics.median(data["kernels"]) if data["kernels"] else None,
        })

    side = Side(res, "runtimed", b)
    with side as out, b.daemon("memory", uv_pool_size=2) as daemon:
        pid = daemon.process.pid
        sessions = []

        def settle() -> int | None:
            b.wait_pool(daemon, 2)
            time.sleep(1.0)
            return rss_bytes(pid)
        try:
            out["rss_idle"] = settle()
            for i in range(n):
                s = daemon.session()
                sessions.append(s)
                with watchdog(180, f"kernel {i + 1}"):
                    s.start_kernel()
                    rt_check(s.run("1+1"), "1+1")
                if i == 0:
                    out["rss_1_kernel"] = settle()
            out[f"rss_{n}_kernels"] = settle()
            kernels = [rss_bytes(p) for p in kernel_pids(pid)]
            out["kernel_pids_found"] = len(kernels)
            out["kernel_rss_median"] = statistics.median([k for k in kernels if k]) if kernels else None
            out["per_kernel_overhead"] = (out[f"rss_{n}_kernels"] - out["rss_idle"]) / n
            out["first_kernel_overhead"] = out["rss_1_kernel"] - out["rss_idle"]
        finally:
            for s in sessions:
                close_session(s)
        with contextlib.suppress(Exception):
            time.sleep(2.0)
            out["rss_after_shutdown"] = rss_bytes(pid)
    return res


def scenario_conda_memory(b: Bench) -> dict[str, Any]:
    """Daemon RSS once its conda pool built one env (rattler's solve and install, the lock file
    written), on the local test channel of runtimed_conda_pool.testing (offline, like its tests)."""
    from runtimed_conda_pool.testing import local_channel

    res: dict[str, Any] = {}
    with Side(res, "runtimed", b) as out:
        with watchdog(600, "the local conda test channel"):
            channel = local_channel()
        rattler = b.root / "rattler-cache"
        env = {"RUNTIMED_CONDA_CHANNELS": channel.url, "RATTLER_CACHE_DIR": str(rattler)}
        with b.daemon("conda-memory", uv_pool_size=0, conda_pool_size=1, env=env) as daemon:
            pid = daemon.process.pid
            client = daemon.client()
            def built() -> int | None:
                deadline = time.monotonic() + 300
                while True:
                    status = client.status()
                    if status.get("conda_available", 0) >= 1 and not status.get("conda_warming"):
                        break
                    if status.get("conda_error") and not status.get("conda_warming"):
                        raise RuntimeError(f"the conda build failed: {status['conda_error']}")
                    if time.monotonic() > deadline:
                        raise BenchTimeout(f"the conda pool did not fill within 300 s: {status}")
                    time.sleep(0.1)
                time.sleep(1.0)
                return rss_bytes(pid)

            out["rss_after_conda_build"] = built()
            more = 2 if b.quick else 5
            for _ in range(more):  # each flush builds another env (from the pool's lock)
                client.flush_pool()
                rss = built()
            out["more_builds"] = more
            out["rss_after_more_conda_builds"] = rss
            # conda-lock's models are pydantic's: its native core in the daemon means conda-lock
            out["pydantic_core_loaded"] = "pydantic_core" in Path(f"/proc/{pid}/maps").read_text()
    return res


def scenario_pool(b: Bench) -> dict[str, Any]:
    """Time to build one uv pool env: warm uv cache (flush_pool -> available) and cold cache."""
    warm_runs = 1 if b.quick else 3
    res: dict[str, Any] = {"warm_runs": warm_runs, "cold": not b.quick}

    with Side(res, "jupyter_client", b) as out:
        out["what"] = "the same env built by hand: uv venv + uv pip install ipykernel ipywidgets + import"
        times = [b.baseline_build_secs] if b.baseline_build_secs and b.cache_was_warm else []
        for i in range(warm_runs - len(times)):
            times.append(build_env(b.root / f"manual-warm-{i}", env=b.uv_env))
            shutil.rmtree(b.root / f"manual-warm-{i}", ignore_errors=True)
        out["warm"] = summary(times)
        if not b.quick:
            cache = b.root / "uv-cache-cold-manual"
            out["cold"] = summary([build_env(b.root / "manual-cold", env={"UV_CACHE_DIR": str(cache)})])
            shutil.rmtree(cache, ignore_errors=True)
            shutil.rmtree(b.root / "manual-cold", ignore_errors=True)

    side = Side(res, "runtimed", b)
    with side as out:
        with b.daemon("pool-warm", uv_pool_size=1) as daemon:
            client = daemon.client()
            times = []
            for _ in range(warm_runs):
                b.wait_pool(daemon, 1)
                with watchdog(600, "pool refill (warm cache)"):
                    t0 = time.perf_counter()
                    client.flush_pool()
                    while True:
                        st = client.status()
                        if st.get("uv_available", 0) >= 1:
                            break
                        time.sleep(0.02)
                    times.append(time.perf_counter() - t0)
            out["warm"] = summary(times)
        if not b.quick:
            cache = b.root / "uv-cache-cold-daemon"
            t0 = time.perf_counter()
            with b.daemon("pool-cold", uv_pool_size=1, env={"UV_CACHE_DIR": str(cache)}, wait=False) as daemon:
                b.wait_pool(daemon, 1, timeout=900)
                out["cold"] = summary([time.perf_counter() - t0])
                out["cold_note"] = "daemon start (empty UV_CACHE_DIR) -> first env available"
            shutil.rmtree(cache, ignore_errors=True)
    return res


def scenario_restart(b: Bench) -> dict[str, Any]:
    """restart_kernel then run('1+1'): time to the result."""
    runs = 2 if b.quick else 5
    warm = 1
    res: dict[str, Any] = {"runs": runs, "warmups": warm}

    with Side(res, "jupyter_client", b) as out, b.jc_kernel() as (km, kc):
        jc_execute(kc, "x = 1")
        times = []
        for i in range(warm + runs):
            with watchdog(90, "jupyter_client restart"):
                t0 = time.perf_counter()
                km.restart_kernel()
                kc.wait_for_ready(timeout=60)
                _, msgs = jc_execute(kc, "1+1")
                dt = time.perf_counter() - t0
            if jc_result_text(msgs) != "2":
                raise RuntimeError(f"unexpected result {jc_result_text(msgs)!r}")
            if i >= warm:
                times.append(dt)
        out["total"] = {**summary(times), "what": "km.restart_kernel() + wait_for_ready + execute 1+1"}

    side = Side(res, "runtimed", b)
    with side as out, b.daemon("restart", uv_pool_size=1) as daemon:
        session = daemon.session()
        try:
            with watchdog(90, "start_kernel"):
                session.start_kernel()
                rt_check(session.run("x = 1"), "x = 1")
                b.wait_pool(daemon, 1)
            times, restarts = [], []
            for i in range(warm + runs):
                with watchdog(30, "runtimed restart_kernel + run('1+1')"):
                    t0 = time.perf_counter()
                    session.restart_kernel()
                    t1 = time.perf_counter()
                    result = session.run("1+1")
                    t2 = time.perf_counter()
                rt_check(result, "1+1 after restart")
                if rt_result_text(result) != "2":
                    raise RuntimeError(f"unexpected result after restart {rt_result_text(result)!r}")
                if i >= warm:
                    times.append(t2 - t0)
                    restarts.append(t1 - t0)
            out["total"] = summary(times)
            out["restart_call_median"] = statistics.median(restarts)
        finally:
            close_session(session)
    return res


def scenario_jupyter(b: Bench) -> dict[str, Any]:
    """nbclient runs a one-cell notebook start to end (NotebookClient.execute(), in this process):
    with the `runtimed-python` kernelspec (runtimed's provisioner, a hot kernel) vs a plain
    `python3`-style kernelspec of the baseline env, alternating run by run."""
    import nbformat
    from nbclient import NotebookClient
    from nbformat import v4

    runs = 3 if b.quick else 7
    res: dict[str, Any] = {"runs": runs, "warmups": 1, "interleaved": True}
    folder = b.root / "jupyter"
    data = folder / "data"
    (data / "kernels").mkdir(parents=True)
    (data / "kernels" / KERNEL_NAME).symlink_to(b.specs_dir / KERNEL_NAME)
    nb = v4.new_notebook()
    nb.cells = [v4.new_code_cell("print('hello')")]

    def execute(kernel_name: str) -> float:
        copy = nbformat.from_dict(json.loads(json.dumps(nb)))
        t0 = time.perf_counter()
        with watchdog(120, f"nbclient with {kernel_name}"):
            NotebookClient(copy, kernel_name=kernel_name, timeout=60,
                           resources={"metadata": {"path": str(folder)}}).execute()
        took = time.perf_counter() - t0
        assert copy.cells[0].outputs[0]["text"] == "hello\n", copy.cells[0].outputs
        return took

    jc, rt = Side(res, "jupyter_client", b), Side(res, "runtimed", b)
    jc_times: list[float] = []
    rt_times: list[float] = []
    old_path = os.environ.get("JUPYTER_PATH")
    with rt as out, b.daemon("jupyter", uv_pool_size=1, hot_kernels=1) as daemon:
        subprocess.run([sys.executable, "-m", "runtimed", "kernelspec", "install", "--prefix",
                        str(folder / "prefix"), "--socket", str(daemon.socket_path)],
                       check=True, capture_output=True, timeout=60)
        os.environ["JUPYTER_PATH"] = os.pathsep.join(
            [str(folder / "prefix" / "share" / "jupyter"), str(data)])
        try:
            for _ in range(1 + runs):
                with jc:
                    jc_times.append(execute(KERNEL_NAME))
                b.wait_hot(daemon)
                rt_times.append(execute("runtimed-python"))
        finally:
            if old_path is None:
                os.environ.pop("JUPYTER_PATH", None)
            else:
                os.environ["JUPYTER_PATH"] = old_path
        out["execute"] = summary(rt_times[1:])
        out["first_run"] = rt_times[0]  # includes importing runtimed in this process
    if len(jc_times) > 1:
        res["jupyter_client"]["execute"] = summary(jc_times[1:])
    return res


def _ws_roundtrips(url: str, token: str, n: int, quickack: bool) -> list[float]:
    """x=1 round trips (execute_request to its reply and idle) over a gateway kernel's channels
    WebSocket with the websockets library, as a plain client does (``quickack``: with
    TCP_QUICKACK re-armed after every frame, as runtimed's gateway launcher does)."""
    import asyncio
    import socket
    import urllib.request

    from websockets.asyncio.client import connect

    headers = {"Authorization": f"token {token}", "Content-Type": "application/json"}

    def rest(method: str, path: str, body: Any = None) -> Any:
        req = urllib.request.Request(url + path, method=method, headers=headers,
                                     data=json.dumps(body).encode() if body is not None else None)
        with urllib.request.urlopen(req, timeout=60) as resp:
            text = resp.read()
            return json.loads(text) if text else None

    session = uuid.uuid4().hex

    def message(msg_type: str, content: dict[str, Any]) -> tuple[str, str]:
        msg_id = uuid.uuid4().hex
        return msg_id, json.dumps({
            "header": {"msg_id": msg_id, "msg_type": msg_type, "session": session,
                       "username": "bench", "version": "5.3",
                       "date": _dt.datetime.now(_dt.timezone.utc).isoformat()},
            "parent_header": {}, "metadata": {}, "content": content, "channel": "shell"})

    async def run() -> list[float]:
        kernel = rest("POST", "/api/kernels", {"name": "python3"})
        ws_url = "ws" + url[len("http"):] + f"/api/kernels/{kernel['id']}/channels?session_id={session}"
        times = []
        try:
            async with connect(ws_url, additional_headers=headers, max_size=None,
                               compression=None) as ws:
                sock = ws.transport.get_extra_info("socket")

                def arm() -> None:
                    if quickack:
                        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_QUICKACK, 1)

                arm()
                msg_id, frame = message("kernel_info_request", {})
                await ws.send(frame)
                while json.loads(await ws.recv())["header"]["msg_type"] != "kernel_info_reply":
                    arm()
                for _ in range(n):
                    t0 = time.perf_counter()
                    msg_id, frame = message("execute_request", {
                        "code": "x=1", "silent": False, "store_history": True,
                        "user_expressions": {}, "allow_stdin": False, "stop_on_error": False})
                    await ws.send(frame)
                    replied = idle = False
                    while not (replied and idle):
                        msg = json.loads(await ws.recv())
                        arm()
                        if msg["parent_header"].get("msg_id") != msg_id:
                            continue
                        replied = replied or msg["header"]["msg_type"] == "execute_reply"
                        idle = idle or (msg["header"]["msg_type"] == "status"
                                        and msg["content"]["execution_state"] == "idle")
                    times.append(time.perf_counter() - t0)
        finally:
            rest("DELETE", f"/api/kernels/{kernel['id']}")
        return times

    return asyncio.run(run())


def scenario_gateway(b: Bench) -> dict[str, Any]:
    """A trivial cell (x=1) through a real Jupyter Kernel Gateway on 127.0.0.1: runtimed's gateway
    launcher (session.run and execute_cell, 100 runs each) vs a plain websocket client of the same
    gateway (the baseline), and the plain client with TCP_QUICKACK (information)."""
    from runtimed_gateway_kernel.testing import Gateway

    n = 30 if b.quick else 100
    res: dict[str, Any] = {"runs": n, "warmups": 5}
    venv = b.root / "gateway-venv"
    uv_bin = find_uv()
    env = {**os.environ, **b.uv_env}
    for argv in ([uv_bin, "venv", "--quiet", "--python", sys.executable, str(venv)],
                 [uv_bin, "pip", "install", "--quiet", "--python", str(venv / "bin" / "python"),
                  "jupyter_kernel_gateway", "ipykernel"]):
        subprocess.run(argv, env=env, check=True, capture_output=True, timeout=900)
    (b.root / "gateway").mkdir()
    gateway = Gateway("kernel_gateway", venv, b.root / "gateway").start()
    try:
        with Side(res, "jupyter_client", b) as out:
            times = _ws_roundtrips(gateway.url, gateway.token, 5 + n, quickack=False)
            out["run"] = summary(times[5:])
            times = _ws_roundtrips(gateway.url, gateway.token, 5 + n, quickack=True)
            out["run_quickack"] = summary(times[5:])
        gw_env = {"RUNTIMED_GATEWAY_URL": gateway.url, "RUNTIMED_GATEWAY_TOKEN": gateway.token}
        with Side(res, "runtimed", b) as out, b.daemon("gateway", uv_pool_size=0, hot_kernels=0,
                                                       env=gw_env) as daemon:
            import runtimed

            s = runtimed.Session(socket_path=daemon.socket_path)
            try:
                t0 = time.perf_counter()
                s.start_kernel(kernel_type="gateway:python3")
                out["start_kernel"] = time.perf_counter() - t0
                runs, _ = _roundtrip_series(lambda: rt_check(s.run("x=1"), "x=1"), n, 120.0,
                                            warm=5, what="gateway session.run round trips")
                out["run"] = summary(runs)
                cell = s.create_cell("x=1")
                runs, _ = _roundtrip_series(lambda: rt_check(s.execute_cell(cell), "x=1"), n, 120.0,
                                            warm=5, what="gateway execute_cell round trips")
                out["execute_cell"] = summary(runs)
            finally:
                close_session(s)
    finally:
        gateway.stop()
    return res


SCALE_RT_CHILD = r"""
import sys, time
import runtimed
socket_path, notebook_id, seconds = sys.argv[1], sys.argv[2], float(sys.argv[3])
with runtimed.Session(notebook_id, socket_path=socket_path) as s:
    s.start_kernel()
    cell = s.create_cell("x=1")
    for _ in range(5):
        s.execute_cell(cell)
    print("ready", flush=True)
    sys.stdin.readline()
    n, end = 0, time.monotonic() + seconds
    while time.monotonic() < end:
        if not s.execute_cell(cell).success:
            raise SystemExit("x=1 failed")
        n += 1
    print(n, flush=True)
    sys.stdin.readline()
"""

SCALE_JC_CHILD = r"""
import sys, time
from jupyter_client import BlockingKernelClient
connection_file, seconds = sys.argv[1], float(sys.argv[2])
kc = BlockingKernelClient(connection_file=connection_file)
kc.load_connection_file()
kc.start_channels()
kc.wait_for_ready(timeout=60)
def once():
    reply = kc.execute_interactive("x=1", timeout=60, output_hook=lambda m: None, allow_stdin=False)
    if reply["content"]["status"] != "ok":
        raise SystemExit("x=1 failed")
for _ in range(5):
    once()
print("ready", flush=True)
sys.stdin.readline()
n, end = 0, time.monotonic() + seconds
while time.monotonic() < end:
    once()
    n += 1
print(n, flush=True)
sys.stdin.readline()
kc.stop_channels()
"""


def cpu_seconds(pid: int) -> float:
    """utime + stime of ``pid`` (from /proc), in seconds."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _release(procs: list[subprocess.Popen[str]], timeout: float) -> None:
    """Tell each child process to finish (a line on its stdin, then EOF) and wait for it;
    one still running after ``timeout`` seconds is killed."""
    for proc in procs:
        with contextlib.suppress(Exception):
            proc.stdin.write("done\n")  # type: ignore[union-attr]
            proc.stdin.close()  # type: ignore[union-attr]
    for proc in procs:
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()


def _concurrent_loops(argvs: list[list[str]], seconds: float, watch_pid: int | None,
                      settle: Callable[[], None] = lambda: None) -> dict[str, Any]:
    """Start one client process per argv, wait until all are ready (then ``settle()``), let them
    loop ``x=1`` for ``seconds`` together; total executions per second (and ``watch_pid``'s CPU
    per execution)."""
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    procs = [subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env)
             for argv in argvs]
    try:
        with watchdog(240, "clients ready"):
            for proc in procs:
                line = proc.stdout.readline()
                if line.strip() != "ready":
                    raise RuntimeError(f"a client did not get ready (exit {proc.poll()}): {line!r}")
            settle()
        cpu0 = cpu_seconds(watch_pid) if watch_pid else None
        t0 = time.monotonic()
        for proc in procs:
            proc.stdin.write("go\n")
            proc.stdin.flush()
        with watchdog(seconds + 120, "client loops"):
            counts = [int(proc.stdout.readline()) for proc in procs]
        elapsed = time.monotonic() - t0
        cpu = cpu_seconds(watch_pid) - cpu0 if watch_pid else None
        total = sum(counts)
        out: dict[str, Any] = {"executions": total, "seconds": elapsed, "per_client": counts,
                               "per_sec": total / elapsed}
        if cpu is not None:
            out["daemon_cpu_per_exec"] = cpu / total if total else None
        return out
    finally:
        _release(procs, 30)


def scenario_scale(b: Bench) -> dict[str, Any]:
    """1, 4 and 16 notebooks, each with its own kernel and its own client process, running
    ``x=1`` in a loop at the same time: total executions per second (runtimed's execute_cell
    vs jupyter_client's execute_interactive on as many kernels), and the daemon's CPU per
    execution."""
    sizes = (1, 4) if b.quick else (1, 4, 16)
    seconds = 3.0 if b.quick else 6.0
    res: dict[str, Any] = {"sizes": list(sizes), "seconds": seconds}
    rt_child, jc_child = b.root / "scale_rt.py", b.root / "scale_jc.py"
    rt_child.write_text(SCALE_RT_CHILD)
    jc_child.write_text(SCALE_JC_CHILD)
    rt_runs: dict[str, Any] = {}
    jc_runs: dict[str, Any] = {}
    with Side(res, "runtimed", b) as out:
        for n in sizes:
            with b.daemon(f"scale{n}", uv_pool_size=n, hot_kernels=0) as daemon:
                argvs = [[sys.executable, str(rt_child), str(daemon.socket_path), f"scale-{n}-{i}",
                          str(seconds)] for i in range(n)]
                # the pool refilled (the kernels took its envs) before the clock starts
                rt_runs[str(n)] = _concurrent_loops(argvs, seconds, daemon.process.pid,
                                                    lambda: b.wait_pool(daemon, n))
        out["runs"] = rt_runs
    with Side(res, "jupyter_client", b) as out:
        for n in sizes:
            kernels = []
            try:
                with watchdog(60 + 15 * n, "jupyter_client kernels"):
                    for _ in range(n):
                        kernels.append(b.jc_start())
                argvs = [[sys.executable, str(jc_child), km.connection_file, str(seconds)]
                         for km, _kc in kernels]
                for _km, kc in kernels:
                    kc.stop_channels()  # the child processes are the clients
                jc_runs[str(n)] = _concurrent_loops(argvs, seconds, None)
            finally:
                for km, _kc in kernels:
                    b.jc_stop(km)
        out["runs"] = jc_runs
    return res


CONVERGE_CHILD = r"""
import asyncio, json, sys, time
import runtimed
from runtimed.document import notebook
from runtimed.document.replica import ROOT
socket_path, notebook_id, proc, sessions, cells, total, out, mode = sys.argv[1:9]
proc, sessions, cells, total = int(proc), int(sessions), int(cells), int(total)

def count(s):  # cells a session's replica holds (the cells map's length: no read of them)
    return s.doc.length(s.doc.get_obj(ROOT, "cells"))

async def main():
    group = [runtimed.AsyncSession(notebook_id, socket_path=socket_path) for _ in range(sessions)]
    for s in group:
        await s.connect()
    print("ready", flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
    t0 = time.monotonic()
    async def edit(j, s):
        for i in range(cells):
            await s.create_cell(f"# cell {proc}-{j}-{i}")
            if mode == "interleaved":  # as a Session's calls do: the sync replies come in between
                await asyncio.sleep(0)
    await asyncio.gather(*(edit(j, s) for j, s in enumerate(group)))
    local = time.monotonic() - t0
    seen, last, progress = {}, None, time.monotonic()
    while len(seen) < sessions:  # when each session first holds every cell (checked each 10 ms)
        for j, s in enumerate(group):
            if j not in seen and count(s) >= total:
                seen[j] = time.monotonic() - t0
        counts = [count(s) for s in group]
        if counts != last:
            last, progress = counts, time.monotonic()
        elif time.monotonic() - progress > 30:
            probe = runtimed.AsyncSession(notebook_id, socket_path=socket_path)
            await probe.connect()
            raise SystemExit(f"no progress for 30 s: {counts} of {total} (the daemon: {count(probe)})")
        await asyncio.sleep(0.01)
    ids = [notebook.cell_ids(s.doc) for s in group]
    sources = sorted(c.source for c in await group[0].get_cells())
    with open(out, "w") as f:
        json.dump({"local": local, "seen": sorted(seen.values()), "same_order": all(i == ids[0] for i in ids),
                   "sources": sources if proc == 0 else len(sources)}, f)
    if proc == 0:
        with open(out + ".doc", "wb") as f:
            f.write(group[0].doc.save())
    print("done", flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
    for s in group:
        await s.close()

asyncio.run(main())
"""


def _apply_floor(saved: bytes, batch: int) -> float:
    """The time one replica takes to apply every change of ``saved`` (a notebook), received
    by sync from a peer in batches of ``batch`` changes in causal order (as a session gets
    them: every writer's next cell at once)."""
    from automerge import core as am

    changes = am.Document.load(saved).get_changes([])
    first = am.Document.load(b"".join(c.bytes for c in changes[:1]))
    src, dst = am.Document.load(first.save()), am.Document.load(first.save())
    src_sync, dst_sync = am.SyncState(), am.SyncState()
    spent = 0.0
    for start in range(1, len(changes), batch):
        part = am.Document.load(b"".join(c.bytes for c in changes[:start + batch]))
        src.merge(part)
        while True:
            msg = src.generate_sync_message(src_sync)
            if msg is not None:
                t0 = time.perf_counter()
                dst.receive_sync_message(dst_sync, am.Message.decode(msg.encode()))
                spent += time.perf_counter() - t0
            t0 = time.perf_counter()
            reply = dst.generate_sync_message(dst_sync)
            spent += time.perf_counter() - t0
            if reply is not None:
                src.receive_sync_message(src_sync, am.Message.decode(reply.encode()))
            if msg is None and reply is None:
                break
    if dst.get_heads() != src.get_heads():
        raise RuntimeError("the floor's replica did not converge")
    return spent


#: Client processes, sessions in each, cells each session adds (per mode: interleaved, where
#: every edit is its own sync round, takes minutes at the full size: it adds 30 each).
CONVERGENCE_SIZES = {"quick": (5, 4, 25), "full": (5, 10, 100), "full-interleaved": (5, 10, 30)}


def scenario_convergence(b: Bench) -> dict[str, Any]:
    """50 sessions (10 in each of 5 client processes) add 100 cells each to one notebook at
    the same time: how long the local edits take, and until every session holds all 5,000
    cells (nothing lost, one order), next to the floor: every replica applies every change,
    so sessions x one replica's apply time / cores. Twice: each session adds its cells at
    once (a script's loop of AsyncSession.create_cell never waits), and interleaved with the
    sync traffic (as a Session's calls are, each a round trip to its loop thread)."""
    sizes = {mode: CONVERGENCE_SIZES["quick" if b.quick else
                                     "full-interleaved" if mode == "interleaved" else "full"]
             for mode in CONVERGENCE_MODES}
    res: dict[str, Any] = {"sizes": sizes, "cores": os.cpu_count(),
                           "modes": list(CONVERGENCE_MODES)}
    res["jupyter_client"] = {"note": "n/a: jupyter_client has no shared notebook document"}
    child = b.root / "converge.py"
    child.write_text(CONVERGE_CHILD)
    with Side(res, "runtimed", b) as out:
        for mode in CONVERGENCE_MODES:
            with b.daemon(f"converge-{mode}", uv_pool_size=0) as daemon:
                out[mode] = _converge(b, daemon, child, mode, *sizes[mode])
    return res


#: How the sessions add their cells (see :func:`scenario_convergence`).
CONVERGENCE_MODES = ("burst", "interleaved")


def _converge(b: Bench, daemon: Any, child: Path, mode: str, procs: int, per_proc: int,
              cells: int) -> dict[str, Any]:
    sessions = procs * per_proc
    total = sessions * cells
    out: dict[str, Any] = {"sessions": sessions, "cells_each": cells}
    notebook_id = f"bench-converge-{uuid.uuid4().hex[:8]}"
    files = [b.root / f"converge-{mode}-{i}.json" for i in range(procs)]
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    children = [subprocess.Popen(
        [sys.executable, str(child), str(daemon.socket_path), notebook_id, str(i),
         str(per_proc), str(cells), str(total), str(files[i]), mode],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env) for i in range(procs)]
    try:
        with watchdog(120, "convergence sessions connect"):
            for c in children:
                if c.stdout.readline().strip() != "ready":
                    raise RuntimeError(f"a client process did not connect (exit {c.poll()})")
        cpu0 = cpu_seconds(daemon.process.pid)
        for c in children:
            c.stdin.write("go\n")
            c.stdin.flush()
        with watchdog(600, f"convergence ({mode})"):
            for c in children:
                if c.stdout.readline().strip() != "done":
                    raise RuntimeError(f"a client process failed (exit {c.poll()})")
        out["daemon_cpu_secs"] = cpu_seconds(daemon.process.pid) - cpu0
    finally:
        _release(children, 60)
    reports = [json.loads(f.read_text()) for f in files]
    expected = sorted(f"# cell {p}-{j}-{i}" for p in range(procs) for j in range(per_proc)
                      for i in range(cells))
    out["nothing_lost"] = reports[0]["sources"] == expected and all(
        r["sources"] == total for r in reports[1:])
    out["same_order"] = all(r["same_order"] for r in reports)
    out["local_edits_secs"] = max(r["local"] for r in reports)
    seen = sorted(t for r in reports for t in r["seen"])
    out["all_converged_secs"] = seen[-1]
    out["first_converged_secs"] = seen[0]
    one = _apply_floor(Path(str(files[0]) + ".doc").read_bytes(), sessions)
    out["one_replica_apply_secs"] = one
    out["floor_secs"] = sessions * one / (os.cpu_count() or 1)
    out["vs_floor"] = out["all_converged_secs"] / out["floor_secs"]
    return out


SCENARIO_FUNCS: dict[str, Callable[[Bench], dict[str, Any]]] = {
    "start": scenario_start,
    "roundtrip": scenario_roundtrip,
    "output": scenario_output,
    "multiclient": scenario_multiclient,
    "bigdoc": scenario_bigdoc,
    "files": scenario_files,
    "viewer": scenario_viewer,
    "agents": scenario_agents,
    "widgets": scenario_widgets,
    "memory": scenario_memory,
    "conda_memory": scenario_conda_memory,
    "pool": scenario_pool,
    "restart": scenario_restart,
    "jupyter": scenario_jupyter,
    "gateway": scenario_gateway,
    "scale": scenario_scale,
    "convergence": scenario_convergence,
}


# --------------------------------------------------------------------------------------------
# report
# --------------------------------------------------------------------------------------------

def _get(d: dict[str, Any] | None, *path: str) -> Any:
    for key in path:
        if not isinstance(d, dict):
            return None
        d = d.get(key)
    return d


def short_error(text: str, limit: int = 160) -> str:
    """First line of an error; when it only introduces more (ends with ':'), add the last line."""
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    if not lines:
        return ""
    out = lines[0]
    if out.endswith(":") and len(lines) > 1:
        out += " " + lines[-1]
    return out[:limit]


def _err(side: dict[str, Any] | None, *path: str) -> str | None:
    """The error recorded for a side or for one of its cases, shortened for the table."""
    for d in (side, _get(side, *path[:1]) if path else None):
        if isinstance(d, dict) and d.get("error"):
            return "ERROR: " + short_error(d["error"], 100)
    return None


def _ratio(a: float | None, b: float | None) -> str:
    if a is None or b is None or not b:
        return "-"
    return f"{a / b:.2f}x"


def _mark(ok: bool | None) -> str:
    return "" if ok is None else (" ✅" if ok else " ❌")


def build_rows(results: dict[str, Any]) -> list[dict[str, str]]:
    rows: list[dict[str, str]] = []

    def add(label: str, rt: str, jc: str, ratio: str, target: str = "", ok: bool | None = None) -> None:
        rows.append({"scenario": label, "runtimed": rt, "jupyter_client": jc, "ratio": ratio,
                     "target": target + _mark(ok)})

    def timed(label: str, res: dict[str, Any], path: tuple[str, ...], stat: str = "median",
              target: str = "", limit: float | None = None, jc_path: tuple[str, ...] | None = None,
              jc_limit_ratio: float | None = None, extra: Callable[[dict[str, Any] | None], str] | None = None
              ) -> None:
        rt, jc = res.get("runtimed"), res.get("jupyter_client")
        rv = _get(rt, *path, stat)
        jv = _get(jc, *(jc_path or path), stat)
        rt_s = _err(rt, *path) or fmt_time(rv)
        jc_s = _err(jc, *(jc_path or path)) or (fmt_time(jv) if jv is not None else (_get(jc, "note") and "n/a" or "-"))
        if extra:
            rt_s += extra(_get(rt, *path))
            jc_s += extra(_get(jc, *(jc_path or path)))
        ok = None
        if rv is not None and (limit is not None or jc_limit_ratio is not None):
            ok = True
            if limit is not None:
                ok = ok and rv <= limit
            if jc_limit_ratio is not None and jv:
                ok = ok and rv <= jc_limit_ratio * jv
        add(label, rt_s, jc_s, _ratio(rv, jv), target, ok)

    scen = results["scenarios"]
    if "start" in scen:
        timed("start -> result of 1+1, warm pool (median)", scen["start"], ("total",),
              target=TARGETS["start"], limit=0.6)
    if "roundtrip" in scen:
        r = scen["roundtrip"]
        timed("trivial cell x=1, round trip p50 (session.run)", r, ("run",), target=TARGETS["roundtrip_p50"],
              limit=0.006, jc_limit_ratio=1.6)
        timed("trivial cell x=1, round trip p95 (session.run)", r, ("run",), stat="p95")
        rt_blocks = _get(r, "runtimed", "run", "blocks_of_25") or []
        jc_blocks = _get(r, "jupyter_client", "run", "blocks_of_25") or []
        if rt_blocks or jc_blocks:
            def growth(bl: list[float]) -> str:
                return f"{fmt_time(bl[0])} -> {fmt_time(bl[-1])} ({bl[-1] / bl[0]:.2f}x)" if bl else "-"
            ok = rt_blocks[-1] / rt_blocks[0] <= 1.2 if rt_blocks else None
            add("x=1 first 25 -> last 25 of 300 (block medians)", growth(rt_blocks), growth(jc_blocks),
                "-", TARGETS["roundtrip_growth"], ok)
        if _get(r, "runtimed", "execute_cell") or _err(r.get("runtimed")):
            timed("x=1 via execute_cell on one pre-created cell, p50 of the first 300", r, ("execute_cell",),
                  jc_path=("run",), target=TARGETS["roundtrip_p50"], limit=0.006, jc_limit_ratio=1.6)
            eb = _get(r, "runtimed", "execute_cell", "blocks_of_25") or []
            if eb:
                runs = len(eb) * 25
                eb250 = _get(r, "runtimed", "execute_cell", "blocks_of_250") or []
                long_run = runs > 300
                add(f"execute_cell first 25 -> last 25 of {runs} (block medians)",
                    f"{fmt_time(eb[0])} -> {fmt_time(eb[-1])} ({eb[-1] / eb[0]:.2f}x)", "-", "-",
                    "(the 1.2x target is over 300 runs)" if long_run else TARGETS["roundtrip_growth"],
                    None if long_run else eb[-1] / eb[0] <= 1.2)
                if len(eb250) > 1:
                    add(f"execute_cell first 250 -> last 250 of {runs} (block medians)",
                        f"{fmt_time(eb250[0])} -> {fmt_time(eb250[-1])} ({eb250[-1] / eb250[0]:.2f}x)",
                        "-", "-", "", None)
    if "output" in scen:
        r = scen["output"]

        def completeness(d: dict[str, Any] | None) -> str:
            if not isinstance(d, dict) or "complete" not in d:
                return ""
            if d["complete"]:
                return ", complete"
            checks = d.get("checks") or []
            got = min((c["lines_received"] for c in checks), default=None)
            return f", INCOMPLETE ({got} lines)" if got is not None else ", INCOMPLETE"
        timed("cell printing 10,000 lines", r, ("lines_10k",), target=TARGETS["lines_10k"], limit=0.15,
              extra=completeness)
        timed("cell printing 100,000 lines", r, ("lines_100k",), target=TARGETS["lines_100k"],
              jc_limit_ratio=1.5, extra=completeness)
        if rows and _get(r, "runtimed", "lines_100k", "complete") is False:
            rows[-1]["target"] = TARGETS["lines_100k"] + " ❌"
        timed("10 MB display_data", r, ("display_10mb",), target=TARGETS["display_10mb"],
              jc_limit_ratio=1.5, extra=completeness)
        if rows and _get(r, "runtimed", "display_10mb", "complete") is False:
            rows[-1]["target"] = TARGETS["display_10mb"] + " ❌"
    if "multiclient" in scen:
        r = scen["multiclient"]
        timed("source edit in A visible in B, p50", r, ("propagation",), target=TARGETS["propagation"],
              limit=0.005)
        timed("source edit in A visible in B, p95", r, ("propagation",), stat="p95")
    if "bigdoc" in scen:
        timed("1,000-cell notebook: 2nd client joins and sees all (median)", scen["bigdoc"], ("join",))
    if "files" in scen:
        r = scen["files"]
        size = f"{r.get('size_bytes', 0) / 1e6:.1f} MB" if r.get("size_bytes") else ""
        timed(f"open a 1,000-cell notebook with outputs ({size}) until get_cells() (median)", r,
              ("open",), target=TARGETS["file_open"], jc_limit_ratio=2)
        timed("save() of it after an edit (median)", r, ("save",), target=TARGETS["file_save"],
              jc_limit_ratio=2)
        timed("`runtimed execute` of a 10-cell notebook, warm daemon (median)", r, ("execute",),
              target=TARGETS["execute"], jc_limit_ratio=0.25)
    if "viewer" in scen:
        r = scen["viewer"]
        timed("1 MB PNG output visible to a 2nd session, p50", r, ("second_session",),
              target=TARGETS["png_visible"], limit=0.05, jc_path=("second_client",))
        timed("... and in an open viewer page (update + blob fetched), p50", r, ("viewer",),
              target=TARGETS["png_visible"], limit=0.05, jc_path=("second_client",))
    if "agents" in scen:
        r = scen["agents"]
        run_p50 = _get(r, "runtimed", "run", "median")
        mcp_p50 = _get(r, "runtimed", "mcp_execute_cell", "median")
        rt_s = _err(r.get("runtimed")) or (f"{fmt_time(mcp_p50)} ({_ratio(mcp_p50, run_p50)} of "
                                           f"session.run {fmt_time(run_p50)})" if mcp_p50 else "-")
        add("MCP execute_cell of x=1, stdio, client in process (p50)", rt_s, "-", "-",
            TARGETS["mcp_execute"], None if not (mcp_p50 and run_p50) else mcp_p50 <= 3 * run_p50)
        timed("stream(): kernel print -> caller (p50)", r, ("stream_latency",),
              target=TARGETS["stream_latency"], limit=0.005)
        timed("stream(): kernel print -> caller (p95)", r, ("stream_latency",), stat="p95")
    if "widgets" in scen:
        r = scen["widgets"]
        timed("`for i in tqdm.notebook.trange(10_000)` cell (median)", r, ("tqdm",),
              target=TARGETS["tqdm"], jc_limit_ratio=1.5)
        timed("... with an update every step (mininterval=0)", r, ("tqdm_every_step",),
              target=TARGETS["tqdm"], jc_limit_ratio=1.5)
        docs = _get(r, "runtimed", "document_bytes") or {}
        small, big = docs.get("1000"), docs.get("10000")
        per_update = (big - small) / 9_000 if small and big else None
        add("runtime-state document after a tqdm cell (mininterval=0): 1,000 -> 10,000 bar updates",
            f"{small:,} -> {big:,} bytes ({per_update:.2f} B per extra update)" if per_update is not None
            else (_err(r.get("runtimed")) or "-"),
            "n/a", "-", TARGETS["widget_doc"], None if per_update is None else per_update < 1)
    if "memory" in scen:
        r = scen["memory"]
        rt, jc = r.get("runtimed"), r.get("jupyter_client")
        n = r.get("kernels", 10)

        def mem(label: str, key: str, target: str = "", limit: float | None = None) -> None:
            rv, jv = _get(rt, key), _get(jc, key)
            ok = None if rv is None or limit is None else rv <= limit
            rt_s = fmt_mb(rv) if rv is not None else (_err(rt) or "-")
            jc_s = fmt_mb(jv) if jv is not None else (_err(jc) or "-")
            add(label, rt_s, jc_s, _ratio(rv, jv), target, ok)
        mem("manager RSS idle (daemon / jupyter_client process)", "rss_idle", TARGETS["rss_idle"], 50 * 2**20)
        mem("manager RSS with 1 kernel", "rss_1_kernel")
        mem(f"manager RSS with {n} kernels", f"rss_{n}_kernels")
        mem(f"manager overhead per kernel (growth / {n})", "per_kernel_overhead", TARGETS["rss_per_kernel"],
            5 * 2**20)
        mem("kernel process RSS (median, separate)", "kernel_rss_median")
    if "conda_memory" in scen:
        rt = scen["conda_memory"].get("runtimed")
        rv = _get(rt, "rss_after_conda_build")
        add("daemon RSS after building one conda env (local test channel)",
            fmt_mb(rv) if rv is not None else (_err(rt) or "-"), "n/a", "-", "<= 50 MB",
            None if rv is None else rv <= 50 * 2**20)
        more = _get(rt, "rss_after_more_conda_builds")
        if more is not None:
            add(f"... after {_get(rt, 'more_builds')} more conda builds (flush_pool)", fmt_mb(more),
                "n/a", "-", "<= 50 MB", more <= 50 * 2**20)
    if "pool" in scen:
        r = scen["pool"]
        timed("pool refill: build one uv env, warm uv cache", r, ("warm",))
        if r.get("cold"):
            timed("pool refill: build one uv env, cold uv cache", r, ("cold",))
    if "restart" in scen:
        timed("restart -> result of 1+1 (median)", scen["restart"], ("total",), target=TARGETS["restart"],
              limit=0.7)
    if "jupyter" in scen:
        timed("nbclient, one-cell notebook, start to end: runtimed-python vs python3 (median)",
              scen["jupyter"], ("execute",), target=TARGETS["nbclient"], jc_limit_ratio=0.3)
    if "gateway" in scen:
        r = scen["gateway"]
        timed("x=1 through a Kernel Gateway, p50: gateway launcher (session.run) vs a plain "
              "WebSocket client", r, ("run",), target=TARGETS["gateway_roundtrip"], jc_limit_ratio=2)
        timed("x=1 through a Kernel Gateway, p50: execute_cell vs the plain client with TCP_QUICKACK",
              r, ("execute_cell",), jc_path=("run_quickack",))
    if "scale" in scen:
        r = scen["scale"]
        rt_runs, jc_runs = _get(r, "runtimed", "runs") or {}, _get(r, "jupyter_client", "runs") or {}
        first_cpu = _get(rt_runs, str(r["sizes"][0]), "daemon_cpu_per_exec")
        for n in r["sizes"]:
            rv, jv = _get(rt_runs, str(n), "per_sec"), _get(jc_runs, str(n), "per_sec")
            cpu = _get(rt_runs, str(n), "daemon_cpu_per_exec")
            rt_s = _err(r.get("runtimed")) or (f"{rv:.0f}/s" if rv else "-")
            if cpu:
                rt_s += f", daemon CPU {cpu * 1000:.2f} ms/exec"
                if first_cpu:
                    rt_s += f" ({cpu / first_cpu:.2f}x of 1)"
            jc_s = _err(r.get("jupyter_client")) or (f"{jv:.0f}/s" if jv else "-")
            ok = None
            if rv and jv:
                ok = rv >= 0.8 * jv and (not cpu or not first_cpu or cpu <= 1.2 * first_cpu)
            add(f"{n} notebook(s) running x=1 at once, executions per second (total)", rt_s, jc_s,
                _ratio(rv, jv), TARGETS["scale"] if n == r["sizes"][-1] else "", ok)
    if "convergence" in scen:
        r = scen["convergence"]
        for mode in r.get("modes", ()):
            rt = _get(r, "runtimed", mode) or {}
            conv, floor = rt.get("all_converged_secs"), rt.get("floor_secs")
            rt_s = _err(r.get("runtimed")) or (
                f"{conv:.1f} s (local edits {rt['local_edits_secs']:.1f} s; "
                f"{'nothing lost' if rt['nothing_lost'] and rt['same_order'] else 'CELLS LOST'}); "
                f"floor {floor:.1f} s = {rt['sessions']} x {rt['one_replica_apply_secs']:.2f} s / "
                f"{r['cores']} cores" if conv and floor else "-")
            procs, per_proc, cells = r["sizes"][mode]
            add(f"{procs * per_proc} sessions x {cells} new cells ({mode}) on one notebook, "
                "until every session holds all", rt_s, "-",
                f"{conv / floor:.2f}x floor" if conv and floor else "-", TARGETS["convergence"],
                None if not (conv and floor) else (rt["nothing_lost"] and rt["same_order"]
                                                   and conv <= 1.2 * floor))
    return rows


def markdown_table(rows: list[dict[str, str]]) -> str:
    lines = ["| scenario | runtimed | jupyter_client | ratio | target |", "|---|---|---|---|---|"]
    for row in rows:
        cells = [row[k].replace("|", "\\|") for k in ("scenario", "runtimed", "jupyter_client", "ratio", "target")]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def machine_info(b: Bench) -> dict[str, Any]:
    info: dict[str, Any] = {
        "date": _dt.datetime.now().astimezone().isoformat(timespec="seconds"),
        "git_commit": git_commit(),
        "cpu_count": os.cpu_count(),
        "platform": platform.platform(),
        "python": sys.version.split()[0],
        "python_executable": sys.executable,
        "loadavg_at_start": os.getloadavg(),
        "uv_cache_dir": str(b.uv_cache),
        "commit_from_env": bool(os.environ.get("RUNTIMED_BENCH_COMMIT")),
    }
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                info["cpu_model"] = line.split(":", 1)[1].strip()
                break
    with contextlib.suppress(OSError):
        mem = Path("/proc/meminfo").read_text().splitlines()[0].split()
        info["mem_total_gib"] = round(int(mem[1]) / 2**20, 1)
    with contextlib.suppress(Exception):
        import jupyter_client

        import runtimed

        info["jupyter_client"] = jupyter_client.__version__
        info["runtimed"] = getattr(runtimed, "__version__", None)
    if b.baseline_python.exists():
        proc = subprocess.run([str(b.baseline_python), "-c",
                               "import ipykernel, sys; print(ipykernel.__version__); print(sys.version.split()[0])"],
                              capture_output=True, text=True, check=False)
        if proc.returncode == 0:
            info["ipykernel"], info["kernel_python"] = proc.stdout.split()[:2]
    return info


def render_report(results: dict[str, Any]) -> str:
    m = results["machine"]
    head = (f"runtimed bench — {m['date']} — commit {m['git_commit']} — {m.get('cpu_count')} cpus "
            f"({m.get('cpu_model', '?')}), python {m['python']}, ipykernel {m.get('ipykernel', '?')}, "
            f"jupyter_client {m.get('jupyter_client', '?')}, hot kernels {results['config']['hot_kernels']}"
            f"{' — QUICK' if results['config']['quick'] else ''}")
    return head + "\n\n" + markdown_table(results["rows"])


def write_results_md(path: Path, results: dict[str, Any]) -> None:
    m = results["machine"]
    errors = []
    for name, scen in results["scenarios"].items():
        for side in ("runtimed", "jupyter_client"):
            d = scen.get(side) or {}
            if d.get("error"):
                errors.append(f"- **{name} / {side}**: `{short_error(d['error'], 300)}`")
            for key, val in d.items():
                if isinstance(val, dict) and val.get("error"):
                    errors.append(f"- **{name} / {side} / {key}**: `{short_error(val['error'], 300)}`")
    snapshot = (" (RUNTIMED_BENCH_COMMIT: run from a `git archive` snapshot of that commit, "
                "see README)") if m.get("commit_from_env") else ""
    text = f"""# Benchmark results

Latest full run of `uv run python bench/run.py` (see [README.md](README.md)).

- date: {m['date']}
- commit: `{m['git_commit']}`{snapshot}
- machine: {m.get('cpu_count')} cpus ({m.get('cpu_model', '?')}), {m.get('mem_total_gib', '?')} GiB, {m['platform']}
- load average at start: {', '.join(f'{x:.2f}' for x in m['loadavg_at_start'])}
- python {m['python']} (kernels: python {m.get('kernel_python', '?')}, ipykernel {m.get('ipykernel', '?')}); jupyter_client {m.get('jupyter_client', '?')}
- daemons: uv pool only (conda pool size 0), hot kernels {results['config']['hot_kernels']}, log level {results['config']['daemon_log_level']}
- wall time: {results['elapsed_secs']:.0f} s{' (quick mode)' if results['config']['quick'] else ''}

{markdown_table(results['rows'])}

Ratio = runtimed / jupyter_client (lower is better for runtimed). Targets are issue 6's;
✅/❌ marks runtimed against them. Times are medians of several runs after a discarded warm-up.
"""
    details = detail_lines(results)
    if details:
        text += "\n## Details\n\n" + "\n".join(details) + "\n"
    if errors:
        text += "\n## Errors recorded\n\n" + "\n".join(errors) + "\n"
    path.write_text(text)


def detail_lines(results: dict[str, Any]) -> list[str]:
    """A few figures behind the table: phases, per-block medians, load."""
    scen = results["scenarios"]
    lines = []
    phases = _get(scen, "start", "runtimed", "phases_median")
    if phases:
        lines.append("- start, runtimed phases (medians): "
                     + ", ".join(f"{k} {fmt_time(v)}" for k, v in phases.items()))
    for side in ("runtimed", "jupyter_client"):
        bl = _get(scen, "roundtrip", side, "run", "blocks_of_25")
        if bl:
            lines.append(f"- x=1 block-of-25 medians, {side}: " + ", ".join(f"{v * 1000:.1f}" for v in bl) + " ms")
    bl = (_get(scen, "roundtrip", "runtimed", "execute_cell", "blocks_of_250")
          or _get(scen, "roundtrip", "runtimed", "execute_cell", "blocks_of_25"))
    if bl:
        size = 250 if _get(scen, "roundtrip", "runtimed", "execute_cell", "blocks_of_250") else 25
        lines.append(f"- execute_cell block-of-{size} medians, runtimed: "
                     + ", ".join(f"{v * 1000:.1f}" for v in bl) + " ms")
    big = _get(scen, "bigdoc", "runtimed")
    if isinstance(big, dict) and "create_cells_secs" in big:
        blocks_100 = big.get("create_blocks_of_100_secs") or []
        growth = (f" (per 100 cells: {fmt_time(blocks_100[0])} for the first, {fmt_time(blocks_100[-1])} "
                  "for the last)") if blocks_100 else ""
        lines.append(f"- bigdoc: client A creating 1,000 cells took {fmt_time(big['create_cells_secs'])}{growth}; "
                     f"join = connect {fmt_time(big.get('connect_median'))} + reading the cells; "
                     f"get_cells() on 1,000 cells {fmt_time(big.get('get_cells_1000_secs'))}")
    restart = _get(scen, "restart", "runtimed", "restart_call_median")
    if restart is not None:
        lines.append(f"- restart: the restart_kernel() call itself {fmt_time(restart)} (median)")
    mem = _get(scen, "memory", "runtimed")
    if isinstance(mem, dict) and "first_kernel_overhead" in mem:
        lines.append(f"- memory: the first kernel grew the daemon by {fmt_mb(mem['first_kernel_overhead'])}; "
                     f"after shutting all kernels down it held {fmt_mb(mem.get('rss_after_shutdown'))}")
    loads = {name: d.get("loadavg_1min_at_start") for name, d in scen.items() if isinstance(d, dict)}
    if loads:
        lines.append("- 1-min load average when each scenario started: "
                     + ", ".join(f"{k} {v}" for k, v in loads.items()))
    return lines


# --------------------------------------------------------------------------------------------
# main
# --------------------------------------------------------------------------------------------

def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="fewer repetitions, no cold-cache build (~3 min)")
    parser.add_argument("--scenarios", default=",".join(SCENARIOS),
                        help=f"comma-separated subset of: {','.join(SCENARIOS)}")
    parser.add_argument("--out", default=str(BENCH_DIR / "results" / "latest.json"), help="JSON results path")
    parser.add_argument("--results-md", default=None,
                        help="also write the table with machine/date/commit to this markdown file "
                             "(e.g. bench/RESULTS.md)")
    parser.add_argument("--daemon-log-level", default="info", help="log level of the benchmarked daemons")
    parser.add_argument("--hot-kernels", type=int, default=0,
                        help="hot kernels per daemon, where runtimed has them (default 0: kernels start "
                             "in a prewarmed env on demand)")
    parser.add_argument("--uv-cache-dir", default=None,
                        help="uv cache for every env the bench builds (default ~/.cache/runtimed-bench/uv)")
    parser.add_argument("--keep", action="store_true", help="keep the temporary root (daemon logs) afterwards")
    parser.add_argument("--from-json", metavar="PATH", default=None,
                        help="run nothing: print the table (and --results-md) of an earlier JSON result")
    args = parser.parse_args(argv)

    if args.from_json:
        earlier = json.loads(Path(args.from_json).read_text())
        earlier["rows"] = build_rows(earlier)
        print(render_report(earlier))
        if args.results_md:
            write_results_md(Path(args.results_md), earlier)
        return 0

    chosen = [s.strip() for s in args.scenarios.split(",") if s.strip()]
    unknown = [s for s in chosen if s not in SCENARIO_FUNCS]
    if unknown:
        parser.error(f"unknown scenarios {unknown}; choose from {', '.join(SCENARIOS)}")

    b = Bench(args)
    started = time.monotonic()
    results: dict[str, Any] = {"config": {"quick": args.quick, "scenarios": chosen,
                                          "daemon_log_level": args.daemon_log_level,
                                          "hot_kernels": args.hot_kernels},
                               "scenarios": {}}
    # Ctrl-C and SIGTERM raise KeyboardInterrupt, so the finally below still cleans up (also when
    # started with SIGINT ignored, as background jobs of a non-interactive shell are).
    def interrupt(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGINT, interrupt)
    signal.signal(signal.SIGTERM, interrupt)
    interrupted = False
    try:
        b.prepare_baseline()
        results["machine"] = machine_info(b)
        for name in chosen:
            log(f"scenario {name}")
            t0 = time.monotonic()
            load = os.getloadavg()[0]
            try:
                results["scenarios"][name] = SCENARIO_FUNCS[name](b)
            except KeyboardInterrupt:
                raise
            except Exception as exc:  # noqa: BLE001 (a harness-level failure: record, go on)
                results["scenarios"][name] = {"error": f"{type(exc).__name__}: {exc}",
                                              "traceback": traceback.format_exc()}
                log(f"scenario {name} FAILED: {exc}")
            results["scenarios"][name]["elapsed_secs"] = round(time.monotonic() - t0, 1)
            results["scenarios"][name]["loadavg_1min_at_start"] = round(load, 2)
            log(f"scenario {name} done in {time.monotonic() - t0:.1f} s")
    except KeyboardInterrupt:
        interrupted = True
        log("interrupted: cleaning up")
    finally:
        b.cleanup()
    results["elapsed_secs"] = time.monotonic() - started
    if "machine" not in results:
        results["machine"] = machine_info(b)
    results["machine"]["loadavg_at_end"] = os.getloadavg()
    results["interrupted"] = interrupted
    results["rows"] = build_rows(results)

    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2, default=str))
    print(render_report(results))
    print(f"\nJSON: {out}   ({results['elapsed_secs']:.0f} s)")
    if args.results_md:
        write_results_md(Path(args.results_md), results)
        print(f"markdown: {args.results_md}")
    return 130 if interrupted else 0


if __name__ == "__main__":
    sys.exit(main())
