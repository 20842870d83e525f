"""``runtimed mcp``: the subcommand this distribution adds to the ``runtimed`` CLI.

Registered in the ``runtimed.commands`` entry-point group; only argparse is imported
until the command runs (the CLI's other commands stay lean).
"""

from __future__ import annotations

import argparse
from typing import Any

DEFAULT_PORT = 47830


def register(sub: Any) -> None:
    """Add ``mcp`` to the ``runtimed`` subcommands."""
    from runtimed_mcp.render import DEFAULT_MAX_CHARS

    cmd = sub.add_parser(
        "mcp", help="a Model Context Protocol server over the daemon's notebooks (stdio)",
        description="Serve the daemon's notebooks to MCP clients (agents): stdio by default; "
                    "--http for streamable HTTP on 127.0.0.1, with the secret of --show-token "
                    "as a bearer token.")
    cmd.add_argument("--http", action="store_true", help="streamable HTTP instead of stdio")
    cmd.add_argument("--port", type=int, default=DEFAULT_PORT,
                     help=f"with --http: the port on 127.0.0.1 (default {DEFAULT_PORT}; 0: any free)")
    cmd.add_argument("--show-token", action="store_true",
                     help="print the HTTP server's bearer token (created if missing) and exit")
    cmd.add_argument("--max-output-chars", type=int, default=DEFAULT_MAX_CHARS,
                     help=f"text per tool result before it is cut (default {DEFAULT_MAX_CHARS})")
    cmd.add_argument("--socket", help="daemon socket (env RUNTIMED_SOCKET_PATH)")
    cmd.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from runtimed_mcp import serve

    if args.show_token:
        print(serve.token())
        return 0
    if args.http:
        return serve.serve_http(args.socket, port=args.port, max_output_chars=args.max_output_chars)
    return serve.serve_stdio(args.socket, max_output_chars=args.max_output_chars)
