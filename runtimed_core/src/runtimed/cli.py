"""The ``runtimed`` command (also ``python -m runtimed``).

Data goes to stdout, logs and errors to stderr; ``--json`` on every data command
(then errors are JSON on stdout too). Exit status: 0 ok, 1 an error, 3 no daemon is
running (the read-only commands ``status``, ``list-rooms``, ``ping`` and ``plugins``
never start one), 130 interrupted, 141 stdout closed early (``| head``).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import getpass
import json
import os
import sys
import uuid
from pathlib import Path
from typing import Any

from runtimed.errors import DaemonNotRunning, InvalidRequest, RuntimedError

EXIT_NOT_RUNNING = 3
EXIT_BROKEN_PIPE = 141  # as for a process killed by SIGPIPE
READ_ONLY = ("status", "list-rooms", "ping", "plugins")


def _flags(args: argparse.Namespace) -> tuple[dict[str, Any], dict[str, Any]]:
    """The daemon flags given: core settings by field, plugin settings by key (parsed)."""
    overrides: dict[str, Any] = {}
    for field in ("socket", "cache_dir", "blob_store_dir", "state_dir"):
        value = getattr(args, field, None)
        if value:
            overrides["socket_path" if field == "socket" else field] = Path(value).expanduser().absolute()
    from runtimed.config import CORE_SETTINGS

    core = {setting.name: setting for setting in CORE_SETTINGS}
    for field in ("hot_kernels", "log_level", "keep_alive_secs"):
        value = getattr(args, field, None)
        if value is not None:
            overrides[field] = core[field].parse_text("", str(value), f"--{field.replace('_', '-')}")
    settings = {}
    for namespace, setting, _owner in getattr(args, "plugin_settings", []):
        text = getattr(args, _dest(namespace, setting))
        if text is not None:
            settings[setting.key(namespace)] = setting.parse_text(namespace, text, setting.flag(namespace))
    return overrides, settings


def _run(args: argparse.Namespace) -> int:
    from runtimed.config import DaemonConfig
    from runtimed.daemon import logfile
    from runtimed.daemon.server import Daemon

    overrides, settings = _flags(args)
    config = DaemonConfig(**overrides, settings=settings)
    on_ready = _detach() if args.detach else None
    logfile.configure(config, to_file=args.detach)  # in the background: the rotating log file
    try:
        asyncio.run(Daemon(config).serve(on_ready=on_ready))
    except RuntimedError as exc:
        if on_ready is not None:
            on_ready(str(exc))
        raise
    return 0


def _dest(namespace: str, setting: Any) -> str:
    return "setting_" + setting.key(namespace).replace(".", "__").replace("-", "_")


def _add_plugin_flags(run: argparse.ArgumentParser) -> None:
    """One flag per knob the installed plugins declare (``--uv-pool-size``...)."""
    from runtimed.plugins import Registry

    declared = Registry.load().declared_settings()
    group = run.add_argument_group("plugin settings")
    for namespace, setting, owner in declared:
        default = setting.default
        shown = (", ".join(map(str, default)) or "none") if isinstance(default, list) else default
        group.add_argument(setting.flag(namespace), dest=_dest(namespace, setting), metavar="VALUE",
                           help=f"{setting.help} (env {setting.env_var(namespace)}, default {shown})")
    run.set_defaults(plugin_settings=declared)


def _detach():  # noqa: ANN202
    """Fork into the background; the parent exits once the child listens (0) or fails (1).

    Returns the child's ``on_ready(error=None)`` callback that releases the parent.
    """
    read_end, write_end = os.pipe()
    if os.fork() != 0:  # parent: wait for the child's word, then exit with it
        os.close(write_end)
        with os.fdopen(read_end, "rb") as pipe:
            word = pipe.read().decode(errors="replace")
        if word != "ok":
            print(f"runtimed: error: {word or 'the daemon exited during start-up'}", file=sys.stderr)
        os._exit(0 if word == "ok" else 1)
    os.close(read_end)
    os.setsid()

    def on_ready(error: str | None = None) -> None:
        nonlocal write_end
        if write_end >= 0:
            os.write(write_end, (error or "ok").encode())
            os.close(write_end)
            write_end = -1

    return on_ready


def _client(args: argparse.Namespace):  # noqa: ANN202 - the sync client
    from runtimed.client.sync import DaemonClient

    return DaemonClient(socket_path=args.socket)


def _print(data: Any, as_json: bool, render) -> None:  # noqa: ANN001
    print(json.dumps(data, indent=2) if as_json else render(data))


def _daemon_line(version: str | None, pid: Any) -> str:
    from runtimed.version import __version__ as ours

    line = f"daemon: runtimed {version or '(an older version)'}, pid {pid}"
    if version != ours:
        line += (f" (this client is runtimed {ours}: `runtimed shutdown`, and the "
                 "next client starts the new version)")
    return line


def _problem(error: str | None, retry_in: float | None) -> str:
    if not error:
        return ""
    first = error.strip().splitlines()[0] if error.strip() else error
    return f"; error: {first}" + (f" (retry in {retry_in:.0f} s)" if retry_in is not None else "")


def _status(args: argparse.Namespace) -> int:
    stats = _client(args).status()
    families = sorted({k.rsplit("_", 1)[0] for k in stats if k.endswith("_warming")})

    def render(s: dict[str, Any]) -> str:
        lines = [_daemon_line(s.get("version"), s.get("pid"))]
        for f in families:
            lines.append(f"{f}: {s.get(f + '_available', 0)} available, "
                         f"{s.get(f + '_warming', 0)} warming"
                         + _problem(s.get(f + "_error"), s.get(f + "_retry_in")))
        lines.append(f"hot kernels: {s.get('hot_available', 0)} ready"
                     + _problem(s.get("hot_error"), s.get("hot_retry_in")))
        return "\n".join(lines)

    _print(stats, args.json, render)
    return 0


def _ping(args: argparse.Namespace) -> int:
    info = _client(args).info()
    _print({"ok": True, **info}, args.json,
           lambda d: f"pong ({_daemon_line(d['version'], d['pid']).removeprefix('daemon: ')})")
    return 0


def _list_rooms(args: argparse.Namespace) -> int:
    rooms = _client(args).list_rooms()

    def render(rows: list[dict[str, Any]]) -> str:
        if not rows:
            return "no rooms"
        lines = [f"{'NOTEBOOK':40} {'PEERS':>5} {'KERNEL':8} {'STATUS':12} ENV"]
        for r in rows:
            path = r.get("path")  # a file's name is at its end: long paths lose their start
            name = (path if len(path) <= 40 else "…" + path[-39:]) if path else r["notebook_id"][:40]
            lines.append(f"{name:40} {r['active_peers']:>5} {r.get('kernel_type') or '-':8} "
                         f"{r.get('kernel_status') or '-':12} {r.get('env_source') or '-'}")
            if r.get("kernel_error"):
                lines.append(f"    error: {r['kernel_error'].strip().splitlines()[0]}")
        return "\n".join(lines)

    _print(rooms, args.json, render)
    return 0


def _flush(args: argparse.Namespace) -> int:
    _client(args).flush_pool()
    print("pools flushed; rebuilding", file=sys.stderr)
    return 0


def _shutdown(args: argparse.Namespace) -> int:
    _client(args).shutdown()
    print("daemon stopped", file=sys.stderr)
    return 0


class _ProgressLine:
    """Renders kernel progress on one updating stderr line (only on a TTY)."""

    def __init__(self) -> None:
        self.active = sys.stderr.isatty()
        self.shown = False

    def __call__(self, kernel: dict[str, Any]) -> None:
        if not self.active:
            return
        text = kernel.get("progress") or kernel.get("lifecycle") or ""
        sys.stderr.write(f"\r\x1b[2K{text[:200]}")
        sys.stderr.flush()
        self.shown = True

    def done(self) -> None:
        if self.shown:
            sys.stderr.write("\r\x1b[2K")
            sys.stderr.flush()


def _exec(args: argparse.Namespace) -> int:
    from runtimed.client.sync import Session

    code = sys.stdin.read() if args.code == "-" else args.code
    session = Session(args.notebook_id, socket_path=args.socket)
    progress = _ProgressLine()
    try:
        session.start_kernel(args.kernel_type, args.env_source, args.notebook_path, on_progress=progress)
        progress.done()
        result = _run_live(session, code, args.timeout, show=not args.json)
        env_source = session.env_source
    finally:
        progress.done()
        if args.notebook_id:
            session.close()  # a named notebook keeps its kernel for the next command
        else:
            session.__exit__(None, None, None)
    if args.json:
        print(json.dumps({"success": result.success, "execution_count": result.execution_count,
                          "env_source": env_source,
                          "outputs": [o.__dict__ for o in result.outputs]}, indent=2, default=str))
    return 0 if result.success else 1


def _print_output(out: Any) -> None:
    if out.output_type == "stream":
        stream = sys.stdout if out.name == "stdout" else sys.stderr
        stream.write(out.text or "")
        stream.flush()
    elif out.output_type in ("execute_result", "display_data") and out.data:
        print(out.data.get("text/plain", f"<{', '.join(out.data)}>"), flush=True)
    elif out.output_type == "error":
        print("\n".join(out.traceback or [f"{out.ename}: {out.evalue}"]), file=sys.stderr, flush=True)


def _terminal_input(prompt: str, password: bool) -> str:
    """Answer the cell's ``input()`` from this terminal (``getpass()``: without echo)."""
    if password:
        return getpass.getpass(prompt)
    return input(prompt)


def _run_live(session: Any, code: str, timeout: float, *, show: bool) -> Any:
    """Run ``code``, its outputs printed as they come (with ``show``) and its ``input()``
    answered from the terminal; its result."""
    cell_id = session.create_cell(code)
    result = None
    for event in session.stream(cell_id, timeout_secs=timeout, stdin=_terminal_input):
        if event.kind == "output" and show:
            _print_output(event.output)
        elif event.kind == "done":
            result = event.result
    return result


def parameter_value(text: str) -> Any:
    """A ``-p`` value as papermill reads one: True/False/None, an int, a float, else the text."""
    if text in ("True", "False"):
        return text == "True"
    if text == "None":
        return None
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def inject_parameters(session: Any, parameters: dict[str, Any]) -> None:
    """papermill's way: a cell tagged ``injected-parameters`` after the cell tagged
    ``parameters`` (the first cell if none); an earlier injected cell is replaced."""
    cells = session.get_cells()
    for cell in cells:
        if "injected-parameters" in (cell.metadata.get("tags") or []):
            session.delete_cell(cell.id)
    cells = [c for c in cells if "injected-parameters" not in (c.metadata.get("tags") or [])]
    index = next((i + 1 for i, c in enumerate(cells) if "parameters" in (c.metadata.get("tags") or [])), 0)
    source = "# Parameters\n" + "".join(f"{name} = {value!r}\n" for name, value in parameters.items())
    cell_id = session.create_cell(source, index=index)
    session.set_cell_metadata(cell_id, "tags", json.dumps(["injected-parameters"]))


def _execute(args: argparse.Namespace) -> int:
    """Run a notebook papermill's way: a copy is executed (the input stays as it is) and
    written to ``-o`` (or over the input with ``--inplace``), with the error in it if a cell
    failed (exit status 1)."""
    from runtimed.client.sync import Session

    source = Path(args.notebook).expanduser().resolve()
    if not args.inplace and not args.output:
        raise InvalidRequest("Give -o OUT.ipynb (where the executed notebook goes) or --inplace")
    target = source if args.inplace else Path(args.output).expanduser().resolve()
    progress = _ProgressLine()
    session = Session(f"execute-{uuid.uuid4()}", socket_path=args.socket)
    try:
        session.connect()
        session._import_notebook(source)
        if args.parameters:
            inject_parameters(session, {name: parameter_value(v) for name, v in args.parameters})
        session.start_kernel(args.kernel_type, args.env_source, str(source), on_progress=progress)

        def on_cell(i: int, n: int, cell: Any, result: Any) -> None:
            if result is None:  # starting
                progress({"progress": f"[{i}/{n}] {cell.source.strip().splitlines()[0][:60]}"})

        results = session.run_all(timeout_secs=args.timeout, allow_errors=args.allow_errors,
                                  on_cell=on_cell)
        tags = {c.id: c.metadata.get("tags") or [] for c in session.get_cells()}
        written = session.save(target)
        session.shutdown_kernel(wait=False)  # the process ends after we are gone
    finally:
        progress.done()
        session.__exit__(None, None, None)
    failed = [r for r in results if not r.success and "raises-exception" not in tags.get(r.cell_id, [])]
    print(f"runtimed: executed {len(results)} cells into {written}", file=sys.stderr)
    for result in failed:
        error = result.error
        what = f"{error.ename}: {error.evalue}" if error else result.failure or "it failed"
        print(f"runtimed: cell {result.cell_id} failed: {what}", file=sys.stderr)
    return 1 if failed and not args.allow_errors else 0


def _open(args: argparse.Namespace) -> int:
    """Print (and open) the address of a notebook's live page."""
    from runtimed.client.connection import pool_request
    from runtimed.client.sync import _LoopThread
    from runtimed import paths

    target = Path(args.notebook).expanduser()
    is_file = target.suffix == ".ipynb" or target.exists()
    fields = {"path": str(target.resolve())} if is_file else {"notebook_id": args.notebook}
    socket = Path(args.socket) if args.socket else paths.socket_path()
    url = _LoopThread.run(pool_request(socket, "viewer_link", **fields))
    print(url)
    if not args.no_browser:
        from runtimed.web import open_in_browser

        open_in_browser(url)
    return 0


def _plugins(args: argparse.Namespace) -> int:
    from runtimed.plugins import describe_plugins, get_plugin_manager

    plugins = describe_plugins(get_plugin_manager())

    def render(rows: list[dict[str, Any]]) -> str:
        lines = []
        for p in rows:
            lines.append(f"{p['name']} ({p['distribution']} {p['version']})")
            for hook, classes in p["provides"].items():
                lines.append(f"    {hook}: {classes if isinstance(classes, str) else ', '.join(classes)}")
            for d in p.get("declares", []):
                if "kernel_type" in d:
                    specs = d.get("kernelspecs")
                    named = (f"; {d['kernel_type']}:<name> for {', '.join(specs) or 'no kernels found'}"
                             if isinstance(specs, dict) and specs else
                             f"; {specs}" if isinstance(specs, str) else "")
                    lines.append(f"    kernel_type {d['kernel_type']}{named}")
                else:
                    lines.append(f"    family {d['family']}: {', '.join(d['sources'])}")
        return "\n".join(lines) or "no plugins"

    _print(plugins, args.json, render)
    return 0


#: Entry-point group of subcommands other distributions add: each entry point is a function
#: ``register(subparsers)`` that adds its parser (cheaply: argparse only) with a ``func``.
COMMANDS_GROUP = "runtimed.commands"


def _add_plugin_commands(sub: Any) -> None:
    """The subcommands installed distributions add (:data:`COMMANDS_GROUP`)."""
    from importlib.metadata import entry_points

    for entry in entry_points(group=COMMANDS_GROUP):
        if entry.name in sub.choices:
            continue
        try:
            entry.load()(sub)
        except Exception as exc:  # a broken plugin must not take the built-in commands down
            print(f"runtimed: warning: the command {entry.name!r} ({entry.value}) could not be "
                  f"loaded: {exc}", file=sys.stderr)



def _kernelspec_install(args: argparse.Namespace) -> int:
    from runtimed import kernelspec

    spec: dict[str, Any] = {"kernel_type": args.kernel_type, "env_source": args.env_source,
                            "language": args.language, "socket_path": args.socket}
    if args.display_name:
        spec["display_name"] = args.display_name
    target = kernelspec.install(args.name, user=args.user, prefix=args.prefix, **spec)
    print(target)
    print(f"installed the Jupyter kernelspec {args.name!r}: its kernels come from the runtimed "
          f"daemon (e.g. jupyter execute --kernel_name={args.name} NB.ipynb)", file=sys.stderr)
    return 0


def _config(args: argparse.Namespace) -> int:
    from runtimed import configfile
    from runtimed.config import check_file, effective
    from runtimed.plugins import Registry

    declared = Registry.load().declared_settings()
    unused = check_file(declared)
    overrides, settings = _flags(args)
    rows = effective(declared, {**overrides, **settings})
    where = configfile.path()
    data = {"file": str(where), "file_exists": where.is_file(), "settings": rows,
            "unused_tables": unused}

    def shown(value: Any) -> str:
        if isinstance(value, list):
            return ", ".join(map(str, value)) or "(none)"
        return "(auto)" if value is None else str(value)

    def render(d: dict[str, Any]) -> str:
        lines = [f"config file: {d['file']}" + ("" if d["file_exists"] else " (none)")]
        width = max(len(r["key"]) for r in d["settings"])
        for r in d["settings"]:
            source = "file" if r["source"].startswith("file ") else r["source"]
            lines.append(f"{r['key']:{width}}  {shown(r['value']):40}  {source}")
        lines += [f"[{t}] in the file is not used: no installed plugin declares it"
                  for t in d["unused_tables"]]
        return "\n".join(lines)

    _print(data, args.json, render)
    return 0


def _daemon_flags(run: argparse.ArgumentParser) -> None:
    """The flags of ``run`` (and ``config``, which shows what they would make)."""
    run.add_argument("--socket", help="Unix socket path (env RUNTIMED_SOCKET_PATH)")
    run.add_argument("--cache-dir", help="environments and caches (env RUNTIMED_CACHE_DIR)")
    run.add_argument("--blob-store-dir", help="output blobs (env RUNTIMED_BLOB_STORE_DIR)")
    run.add_argument("--state-dir", help="persisted notebook documents (env RUNTIMED_STATE_DIR)")
    run.add_argument("--hot-kernels", type=int,
                     help="kernels of the default type kept started in prewarmed envs "
                          "(env RUNTIMED_HOT_KERNELS, default 1)")
    run.add_argument("--keep-alive-secs", type=float,
                     help="seconds an abandoned room keeps its kernel (env RUNTIMED_KEEP_ALIVE_SECS, default 30)")
    run.add_argument("--log-level", help="debug, info, warning, error (env RUNTIMED_LOG_LEVEL)")


def build_parser(plugin_flags: bool = False, plugin_commands: bool = True) -> argparse.ArgumentParser:
    """The CLI; with ``plugin_flags``, ``run`` and ``config`` also take the installed plugins'
    settings; with ``plugin_commands``, the subcommands of :data:`COMMANDS_GROUP` are there too."""
    from runtimed.version import __version__

    parser = argparse.ArgumentParser(prog="runtimed", description="The runtimed notebook daemon.")
    parser.add_argument("--version", action="version", version=f"runtimed {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="show tracebacks on errors")
    common = argparse.ArgumentParser(add_help=False)  # -v after the subcommand too
    common.add_argument("-v", "--verbose", action="store_true", default=argparse.SUPPRESS,
                        help="show tracebacks on errors")
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", parents=[common], help="run the daemon in the foreground")
    _daemon_flags(run)
    run.add_argument("--detach", action="store_true",
                     help="run in the background (logging to <log dir>/runtimed.log, rotated); "
                          "return once the daemon listens")
    run.set_defaults(func=_run)
    config = sub.add_parser("config", parents=[common],
                            help="every effective setting and where it comes from")
    _daemon_flags(config)
    config.add_argument("--json", action="store_true", help="machine-readable output")
    config.set_defaults(func=_config)
    if plugin_flags:
        _add_plugin_flags(run)
        _add_plugin_flags(config)

    exe = sub.add_parser("exec", parents=[common],
                         help="run code in a notebook's kernel and print its outputs")
    exe.add_argument("code", help="the code, or - to read it from stdin")
    exe.add_argument("--notebook-id", help="a notebook to share (its kernel stays running)")
    exe.add_argument("--kernel-type", default="python")
    exe.add_argument("--env-source", default="auto")
    exe.add_argument("--notebook-path", help="resolve project files (pyproject.toml...) from here")
    exe.add_argument("--timeout", type=float, default=60.0, help="seconds (default 60)")
    exe.add_argument("--socket", help="daemon socket (env RUNTIMED_SOCKET_PATH)")
    exe.add_argument("--json", action="store_true", help="machine-readable output")
    exe.set_defaults(func=_exec)

    run_nb = sub.add_parser("execute", parents=[common],
                            help="run a notebook file's cells and write the executed notebook")
    run_nb.add_argument("notebook", help="the .ipynb to run (left as it is, unless --inplace)")
    out = run_nb.add_mutually_exclusive_group()
    out.add_argument("-o", "--output", help="where the executed notebook goes")
    out.add_argument("--inplace", action="store_true", help="write it over the input")
    run_nb.add_argument("-p", "--parameter", dest="parameters", nargs=2, action="append",
                        metavar=("NAME", "VALUE"), help="a parameter, injected as papermill does")
    run_nb.add_argument("--timeout", type=float, help="seconds per cell (default: no limit)")
    run_nb.add_argument("--allow-errors", action="store_true",
                        help="run every cell even after one fails (exit status 0)")
    run_nb.add_argument("--kernel-type", default="auto", help="default: the notebook's kernelspec")
    run_nb.add_argument("--env-source", default="auto")
    run_nb.add_argument("--socket", help="daemon socket (env RUNTIMED_SOCKET_PATH)")
    run_nb.set_defaults(func=_execute)

    view = sub.add_parser("open", parents=[common],
                          help="the live page of a notebook (a file or a notebook id) in a browser")
    view.add_argument("notebook", help="a notebook file, or the id of a notebook the daemon has")
    view.add_argument("--no-browser", action="store_true", help="only print the address")
    view.add_argument("--socket", help="daemon socket (env RUNTIMED_SOCKET_PATH)")
    view.set_defaults(func=_open)

    spec = sub.add_parser("kernelspec", help="a Jupyter kernelspec whose kernels come from the daemon")
    spec_sub = spec.add_subparsers(dest="kernelspec_command", required=True)
    install = spec_sub.add_parser(
        "install", help="install it, so JupyterLab, nbclient and papermill get runtimed's kernels")
    where = install.add_mutually_exclusive_group()
    where.add_argument("--user", action="store_true",
                       help="into your Jupyter data dir (default: this environment's sys.prefix)")
    where.add_argument("--prefix", help="into PREFIX/share/jupyter/kernels")
    install.add_argument("--name", default="runtimed-python", help="kernelspec name (default runtimed-python)")
    install.add_argument("--display-name", help="name shown in Jupyter (default 'Python (runtimed)')")
    install.add_argument("--kernel-type", default="auto",
                         help="what start_kernel gets (default auto: the daemon's default kernel)")
    install.add_argument("--env-source", default="prewarmed",
                         help="what start_kernel gets (default prewarmed: a hot kernel when ready)")
    install.add_argument("--language", default="python", help="the spec's language (default python)")
    install.add_argument("--socket", help="always use the daemon on this socket "
                                          "(default: the one clients find, RUNTIMED_SOCKET_PATH)")
    install.set_defaults(func=_kernelspec_install)

    for name, func, doc, has_json in (
        ("status", _status, "the daemon's version and pools (never starts one)", True),
        ("ping", _ping, "check that the daemon answers (never starts one)", True),
        ("list-rooms", _list_rooms, "open notebook rooms (never starts a daemon)", True),
        ("flush", _flush, "discard and rebuild the environment pools", False),
        ("shutdown", _shutdown, "stop the daemon", False),
        ("plugins", _plugins, "installed plugins and what they provide", True),
    ):
        cmd = sub.add_parser(name, parents=[common], help=doc)
        cmd.add_argument("--socket", help="daemon socket (env RUNTIMED_SOCKET_PATH)")
        if has_json:
            cmd.add_argument("--json", action="store_true", help="machine-readable output")
        cmd.set_defaults(func=func)
    if plugin_commands:
        _add_plugin_commands(sub)
    return parser


BUILT_IN_COMMANDS = frozenset(("run", "config", "exec", "execute", "open", "kernelspec", "status",
                               "ping", "list-rooms", "flush", "shutdown", "plugins"))


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    verbose = "-v" in argv or "--verbose" in argv
    as_json = "--json" in argv
    command = next((arg for arg in argv if not arg.startswith("-")), None)
    try:
        # Only `run` and `config` load the plugins to parse their flags, and only a command that
        # is not built in looks for the commands other distributions add: the others stay lean.
        args = build_parser(plugin_flags=command in ("run", "config"),
                            plugin_commands=command not in BUILT_IN_COMMANDS).parse_args(argv)
        return args.func(args)
    except DaemonNotRunning as exc:
        if verbose:
            raise
        where = exc.context.get("socket_path")
        if as_json:
            _print({"running": False, "socket_path": where,
                    "error": {"type": type(exc).__name__, "message": str(exc)}}, True, str)
        elif command in READ_ONLY:
            print(f"not running (no daemon at {where})")
        else:
            print(f"runtimed: error: {exc}", file=sys.stderr)
        return EXIT_NOT_RUNNING
    except RuntimedError as exc:
        if verbose:
            raise
        if as_json:
            _print({"error": {"type": type(exc).__name__, "message": str(exc)}}, True, str)
        else:
            print(f"runtimed: error: {exc}", file=sys.stderr)
        return 1
    except BrokenPipeError:
        # The reader went away (`runtimed plugins --json | head -1`): no traceback, and none
        # at exit either when Python flushes stdout.
        with contextlib.suppress(OSError):
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_BROKEN_PIPE
    except KeyboardInterrupt:
        return 130
