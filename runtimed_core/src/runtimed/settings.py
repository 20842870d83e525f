"""The setting contract: configuration knobs a plugin declares.

A pool or launcher lists its knobs in its ``settings`` class attribute; the
daemon then accepts each one as an environment variable and as a
``runtimed run`` flag, and hands the plugin the effective value. A knob's key is
``<namespace>.<name>``, where the namespace is the pool's family or the
launcher's kernel type::

    class CondaPool(EnvPool):
        family = "conda"
        settings = (
            Setting("channels", ["conda-forge"], "conda channels", parse=csv),
        )

    # key conda.channels, env RUNTIMED_CONDA_CHANNELS, flag --conda-channels
    self.setting("channels")   # -> ["conda-forge"], or what the user set

Precedence: a flag (or an explicit :attr:`runtimed.config.DaemonConfig.settings`
entry) over the environment variable over the configuration file
(:mod:`runtimed.configfile`: ``[conda]`` then ``channels = [...]``) over the
default. A value that does not parse is a :class:`runtimed.errors.ConfigError`
naming the variable or the file and key. The core's own settings
(:data:`runtimed.config.CORE_SETTINGS`) are ``Setting`` objects too, with an
empty namespace: key ``hot_kernels``, variable ``RUNTIMED_HOT_KERNELS``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from runtimed import configfile
from runtimed.errors import ConfigError


def csv(text: str) -> list[str]:
    """A comma-separated list (blank items dropped): the parser for list-valued knobs."""
    return [item.strip() for item in text.split(",") if item.strip()]


def flag_bool(text: str) -> bool:
    """``1``/``true``/``yes``/``on`` or ``0``/``false``/``no``/``off`` (any case)."""
    value = text.strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off", ""):
        return False
    raise ValueError(f"expected true or false, got {text!r}")


@dataclass(frozen=True)
class Setting:
    """One knob: its name within the plugin's namespace, default, help and parser."""

    #: The name within the namespace, in snake case (``pool_size``).
    name: str
    #: The value when neither a flag nor the environment sets one.
    default: Any
    #: One line for ``runtimed run --help`` and the docs.
    help: str = ""
    #: Turns the text of an environment variable or flag into the value (``int``, :func:`csv`...).
    parse: Callable[[str], Any] = str
    #: The environment variable; default ``RUNTIMED_<NAMESPACE>_<NAME>`` in upper case.
    env: str | None = None
    #: Computes the default when there is no fixed one (a directory derived from another).
    default_factory: Callable[[], Any] | None = None

    def key(self, namespace: str) -> str:
        """``<namespace>.<name>`` (just the name for the core's): the key in
        :attr:`DaemonConfig.settings` and in the configuration file."""
        return f"{namespace}.{self.name}" if namespace else self.name

    def env_var(self, namespace: str) -> str:
        parts = ["RUNTIMED", namespace, self.name] if namespace else ["RUNTIMED", self.name]
        return self.env or "_".join(parts).upper().replace("-", "_")

    def flag(self, namespace: str) -> str:
        """The ``runtimed run`` flag: ``--<namespace>-<name>`` with dashes."""
        return f"--{self.key(namespace).replace('.', '-')}".replace("_", "-")

    def default_value(self) -> Any:
        if self.default_factory is not None:
            return self.default_factory()
        return list(self.default) if isinstance(self.default, list) else self.default

    def parse_text(self, namespace: str, text: str, where: str) -> Any:
        """Parse ``text`` (from ``where``: a variable or flag name); ConfigError if it does not."""
        try:
            return self.parse(text)
        except (TypeError, ValueError) as exc:
            raise ConfigError(
                f"{where}={text!r} is not a valid value for {self.key(namespace)}: {exc}"
            ) from None

    def parse_file_value(self, namespace: str, value: Any) -> Any:
        """A configuration-file value: a list for a list-valued setting stays a list (of
        strings); anything else is parsed as the environment variable's text would be."""
        key = self.key(namespace)
        if isinstance(value, list) and isinstance(self.default, list):
            if not all(isinstance(item, str) for item in value):
                raise ConfigError(f"{configfile.path()}: {key} = {value!r} is not a valid value "
                                  f"for {key}: expected a list of strings")
            return list(value)
        text = configfile.as_text(key, value)
        try:
            return self.parse(text)
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"{configfile.path()}: {key} = {value!r} is not a valid value "
                              f"for {key}: {exc}") from None

    def resolve(self, namespace: str, overrides: Mapping[str, Any],
                environ: Mapping[str, str] | None = None) -> Any:
        """The effective value: an override, else the environment variable, else the
        configuration file, else the default."""
        return self.resolve_with_source(namespace, overrides, environ)[0]

    def resolve_with_source(self, namespace: str, overrides: Mapping[str, Any],
                            environ: Mapping[str, str] | None = None) -> tuple[Any, str]:
        """:meth:`resolve` and where the value came from: ``flag``, ``env <VAR>``,
        ``file <path>`` or ``default``."""
        key = self.key(namespace)
        if key in overrides:
            return overrides[key], "flag"
        found = configfile.lookup(key, self.env_var(namespace), environ)
        if found is None:
            return self.default_value(), "default"
        value, source = found
        if source.startswith("env "):
            return self.parse_text(namespace, value, source[4:]), source
        return self.parse_file_value(namespace, value), source


class Configurable:
    """Mixin for plugin classes with declared :attr:`settings` (pools and launchers)."""

    #: The knobs this class declares (see the module docstring).
    settings: tuple[Setting, ...] = ()

    config: Any  # a runtimed.config.DaemonConfig

    @classmethod
    def settings_namespace(cls) -> str:
        """The first part of this class's setting keys (a pool's family, a launcher's kernel type)."""
        raise NotImplementedError

    @classmethod
    def declared_settings(cls) -> tuple[Setting, ...]:
        """Every knob of this class, including those the base class adds."""
        return tuple(cls.settings)

    def setting(self, name: str) -> Any:
        """The effective value of the declared knob ``name``."""
        namespace = self.settings_namespace()
        for declared in self.declared_settings():
            if declared.name == name:
                return self.config.resolve_setting(namespace, declared)
        raise KeyError(f"{type(self).__qualname__} declares no setting {name!r}")
