"""The configuration file: ``<user config dir>/runt/runtimed.toml``.

It holds the same settings as the environment variables, keyed as
:class:`runtimed.settings.Setting` keys: the core's at the top level
(``hot_kernels = 2``), a plugin's in a table named after its namespace
(``[conda]`` then ``channels = ["conda-forge"]``, or ``conda.channels = [...]``
at the top level, which TOML reads the same)::

    hot_kernels = 2
    log_level = "debug"

    [uv]
    pool_size = 3

``RUNTIMED_CONFIG_FILE`` names another file. The file is read lazily and again
whenever it changes. Values are TOML values (a list for a list-valued
setting) or the same text the environment variable takes.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import platformdirs

from runtimed.errors import ConfigError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

APP = "runt"
FILE_NAME = "runtimed.toml"
#: The variable that names another configuration file.
ENV = "RUNTIMED_CONFIG_FILE"

_cache: tuple[Path, tuple[int, int], dict[str, Any]] | None = None


def path() -> Path:
    """Where the configuration file is (it need not exist)."""
    override = os.environ.get(ENV)
    if override:
        return Path(override).expanduser()
    return Path(platformdirs.user_config_dir(APP, appauthor=False)) / FILE_NAME


def load() -> dict[str, Any]:
    """The file's settings by key (``hot_kernels``, ``conda.channels``); {} without a file.

    A file that is not valid TOML, or nests tables deeper than one level, is a
    :class:`ConfigError` naming it.
    """
    global _cache
    where = path()
    try:
        st = where.stat()
    except OSError:
        return {}
    stamp = (st.st_mtime_ns, st.st_size)
    if _cache is not None and _cache[0] == where and _cache[1] == stamp:
        return _cache[2]
    try:
        raw = tomllib.loads(where.read_text())
    except OSError as exc:
        raise ConfigError(f"{where}: cannot read the configuration file: {exc.strerror or exc}") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{where}: not valid TOML: {exc}") from None
    values: dict[str, Any] = {}
    for key, value in raw.items():
        if isinstance(value, dict):
            for name, inner in value.items():
                if isinstance(inner, dict):
                    raise ConfigError(f"{where}: [{key}] {name} is a table; settings are values")
                values[f"{key}.{name}"] = inner
        else:
            values[key] = value
    _cache = (where, stamp, values)
    return values


def lookup(key: str, env_var: str | None, environ: Mapping[str, str] | None = None
           ) -> tuple[Any, str] | None:
    """The raw value of setting ``key`` and where it came from: the environment variable
    (text; ``env <VAR>``) when set and not empty, else the file (``file <path>``); None if neither."""
    env = os.environ if environ is None else environ
    if env_var:
        text = env.get(env_var)
        if text:
            return text, f"env {env_var}"
    values = load()
    if key in values:
        return values[key], f"file {path()}"
    return None


def as_text(key: str, value: Any) -> str:
    """A file value as the text an environment variable would hold (for settings parsed from text)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float, str)):
        return str(value)
    if isinstance(value, list) and all(isinstance(v, (str, int, float)) for v in value):
        return ",".join(str(v) for v in value)
    raise ConfigError(f"{path()}: {key} = {value!r} is not a value runtimed can use")


def unknown_keys(known: set[str], namespaces: set[str]) -> tuple[list[str], list[str]]:
    """Keys of the file that no setting has: ``(errors, unused)``. ``errors`` are keys at the
    top level or in the table of an installed namespace (typos); ``unused`` are tables of
    namespaces no installed plugin declares (e.g. a plugin that is disabled)."""
    errors, unused = [], []
    for key in load():
        if key in known:
            continue
        namespace = key.split(".", 1)[0] if "." in key else None
        if namespace is None or namespace in namespaces:
            errors.append(key)
        elif namespace not in unused:
            unused.append(namespace)
    return errors, unused
