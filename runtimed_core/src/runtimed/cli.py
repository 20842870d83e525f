"""The ``runtimed`` command (also ``python -m runtimed``).

Data goes to stdout, logs and errors to stderr; ``--json`` on every data command.
"""

from __future__ import annotations

import argparse
import asyncio
import getpass
import json
import logging
import os
import sys
import uuid
from pathlib import Path
from typing import Any

from runtimed.errors import InvalidRequest, RuntimedError


def _run(args: argparse.Namespace) -> int:
    from runtimed.config import DaemonConfig
    from runtimed.daemon.server import Daemon

    overrides: dict[str, Any] = {}
    for field in ("socket", "cache_dir", "blob_store_dir", "state_dir"):
        value = getattr(args, field)
        if value:
            overrides["socket_path" if field == "socket" else field] = Path(value).expanduser().absolute()
    for field in ("hot_kernels", "log_level", "keep_alive_secs"):
        value = getattr(args, field)
        if value is not None:
            overrides[field] = value
    settings = {}
    for namespace, setting, _owner in getattr(args, "plugin_settings", []):
        text = getattr(args, _dest(namespace, setting))
        if text is not None:
            settings[setting.key(namespace)] = setting.parse_text(namespace, text, setting.flag(namespace))
    config = DaemonConfig(**overrides, settings=settings)
    on_ready = _detach() if args.detach else None
    logging.basicConfig(
        level=getattr(logging, config.log_level.upper(), logging.INFO),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr,
    )
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


def _status(args: argparse.Namespace) -> int:
    stats = _client(args).status()
    families = sorted({k.rsplit("_", 1)[0] for k in stats if k.endswith("_warming")})

    def render(s: dict[str, int]) -> str:
        lines = [f"{f}: {s.get(f + '_available', 0)} available, {s.get(f + '_warming', 0)} warming"
                 for f in families]
        return "\n".join([*lines, f"hot kernels: {s.get('hot_available', 0)} ready"])

    _print(stats, args.json, render)
    return 0


def _ping(args: argparse.Namespace) -> int:
    alive = _client(args).ping()
    _print({"ok": alive}, args.json, lambda d: "pong" if d["ok"] else "no daemon")
    return 0 if alive else 1


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
        return "\n".join(lines)

    _print(rooms, args.json, render)
    return 0


def _flush(args: argparse.Namespace) -> int:
    _client(args).flush_pool()
    print("pools flushed; rebuilding", file=sys.stderr)
    return 0


def _shutdown(args: argparse.Namespace) -> int:
    _client(args).shutdown()
    print("daemon shutting down", file=sys.stderr)
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


def build_parser(plugin_flags: bool = False, plugin_commands: bool = True) -> argparse.ArgumentParser:
    """The CLI; with ``plugin_flags``, ``run`` also takes the installed plugins' settings;
    with ``plugin_commands``, the subcommands of :data:`COMMANDS_GROUP` are there too."""
    parser = argparse.ArgumentParser(prog="runtimed", description="The runtimed notebook daemon.")
    parser.add_argument("-v", "--verbose", action="store_true", help="show tracebacks on errors")
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="run the daemon in the foreground")
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
    run.add_argument("--detach", action="store_true",
                     help="run in the background; return once the daemon listens")
    run.set_defaults(func=_run)
    if plugin_flags:
        _add_plugin_flags(run)

    exe = sub.add_parser("exec", help="run code in a notebook's kernel and print its outputs")
    exe.add_argument("code", help="the code, or - to read it from stdin")
    exe.add_argument("--notebook-id", help="a notebook to share (its kernel stays running)")
    exe.add_argument("--kernel-type", default="python")
    exe.add_argument("--env-source", default="auto")
    exe.add_argument("--notebook-path", help="resolve project files (pyproject.toml...) from here")
    exe.add_argument("--timeout", type=float, default=60.0, help="seconds (default 60)")
    exe.add_argument("--socket", help="daemon socket (env RUNTIMED_SOCKET_PATH)")
    exe.add_argument("--json", action="store_true", help="machine-readable output")
    exe.set_defaults(func=_exec)

    run_nb = sub.add_parser("execute", help="run a notebook file's cells and write the executed notebook")
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

    for name, func, doc, has_json in (
        ("status", _status, "pool counts", True),
        ("ping", _ping, "check that the daemon answers", True),
        ("list-rooms", _list_rooms, "open notebook rooms", True),
        ("flush", _flush, "discard and rebuild the environment pools", False),
        ("shutdown", _shutdown, "stop the daemon", False),
        ("plugins", _plugins, "installed plugins and what they provide", True),
    ):
        cmd = sub.add_parser(name, help=doc)
        cmd.add_argument("--socket", help="daemon socket (env RUNTIMED_SOCKET_PATH)")
        if has_json:
            cmd.add_argument("--json", action="store_true", help="machine-readable output")
        cmd.set_defaults(func=func)
    if plugin_commands:
        _add_plugin_commands(sub)
    return parser


BUILT_IN_COMMANDS = frozenset(("run", "exec", "execute", "status", "ping", "list-rooms", "flush",
                               "shutdown", "plugins"))


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    verbose = "-v" in argv or "--verbose" in argv
    command = next((arg for arg in argv if not arg.startswith("-")), None)
    try:
        # Only `run` loads the plugins to parse their flags, and only a command that is not
        # built in looks for the commands other distributions add: the others stay lean.
        args = build_parser(plugin_flags=command == "run",
                            plugin_commands=command not in BUILT_IN_COMMANDS).parse_args(argv)
        return args.func(args)
    except RuntimedError as exc:
        if verbose:
            raise
        print(f"runtimed: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
