"""A Jupyter kernelspec whose kernels come from the daemon (``runtimed kernelspec install``).

Jupyter tools (JupyterLab, nbclient, papermill, ``jupyter console``) start a
kernelspec's kernel through its *kernel provisioner* when the spec names one in
``metadata.kernel_provisioner`` (jupyter_client 7 and later). The spec written
here names the provisioner ``runtimed`` of the entry-point group
``jupyter_client.kernel_provisioners``: it asks the daemon for a kernel (a hot
one when ready, else one from the pool), hands jupyter_client the kernel's
connection info, and gives the kernel back when the tool shuts it down. The
provisioner is a separate distribution (it imports jupyter_client, which this
package does not need); this module only writes the file, so that the command
works without loading Jupyter at all.

The spec's ``argv`` is never run by a tool that knows provisioners; one that does
not (an old jupyter_client) gets a process that exits saying why.
"""

from __future__ import annotations

import json
import os
import re
import sys
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

from runtimed.errors import InvalidRequest, PluginError

PROVISIONER_GROUP = "jupyter_client.kernel_provisioners"
#: The provisioner's name in :data:`PROVISIONER_GROUP`: what the kernelspec asks for.
PROVISIONER_NAME = "runtimed"
DEFAULT_NAME = "runtimed-python"
#: Kernelspec names jupyter_client accepts.
_VALID_NAME = re.compile(r"^[a-z0-9._\-]+$")
_NO_PROVISIONER = (
    "import sys; sys.exit('This kernelspec starts its kernels through the runtimed kernel "
    "provisioner: use it with a Jupyter tool on jupyter_client 7 or later, with "
    "runtimed-jupyter-provisioner installed')"
)


def provisioner_installed() -> bool:
    """Whether an installed distribution registers the ``runtimed`` kernel provisioner."""
    return any(ep.name == PROVISIONER_NAME for ep in entry_points(group=PROVISIONER_GROUP))


def kernelspec(*, display_name: str = "Python (runtimed)", language: str = "python",
               kernel_type: str = "auto", env_source: str = "prewarmed",
               socket_path: str | None = None) -> dict[str, Any]:
    """The ``kernel.json`` content. ``kernel_type``/``env_source`` are what the provisioner
    asks the daemon for; ``socket_path`` pins a daemon (default: the one clients find, with
    ``RUNTIMED_SOCKET_PATH`` as usual)."""
    config: dict[str, Any] = {"kernel_type": kernel_type, "env_source": env_source}
    if socket_path:
        config["socket_path"] = str(Path(socket_path).expanduser().absolute())
    return {
        "argv": [sys.executable, "-c", _NO_PROVISIONER, "{connection_file}"],
        "display_name": display_name,
        "language": language,
        "interrupt_mode": "signal",
        "metadata": {"kernel_provisioner": {"provisioner_name": PROVISIONER_NAME,
                                            "config": config}},
    }


def user_kernels_dir() -> Path:
    """Jupyter's per-user ``kernels`` directory (``JUPYTER_DATA_DIR`` if set)."""
    try:
        from jupyter_core.paths import jupyter_data_dir  # where Jupyter itself looks, if installed
    except ImportError:
        data = os.environ.get("JUPYTER_DATA_DIR")
        if data:
            return Path(data) / "kernels"
        if sys.platform == "darwin":
            return Path.home() / "Library" / "Jupyter" / "kernels"
        if os.name == "nt":
            return Path(os.environ.get("APPDATA", Path.home())) / "jupyter" / "kernels"
        xdg = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
        return Path(xdg) / "jupyter" / "kernels"
    return Path(jupyter_data_dir()) / "kernels"


def kernels_dir(*, user: bool = False, prefix: str | os.PathLike[str] | None = None) -> Path:
    """Where :func:`install` writes: ``<prefix>/share/jupyter/kernels`` (default prefix: this
    environment's ``sys.prefix``, which Jupyter tools run from it search), or with ``user``
    the per-user directory every environment's Jupyter searches."""
    if user and prefix is not None:
        raise InvalidRequest("Give either --user or --prefix, not both")
    if user:
        return user_kernels_dir()
    root = Path(prefix if prefix is not None else sys.prefix).expanduser().absolute()
    return root / "share" / "jupyter" / "kernels"


def install(name: str = DEFAULT_NAME, *, user: bool = False,
            prefix: str | os.PathLike[str] | None = None, **spec: Any) -> Path:
    """Write the kernelspec ``name`` (replacing one of that name there); return its directory.
    ``spec`` goes to :func:`kernelspec`. PluginError if the provisioner is not installed."""
    if not _VALID_NAME.match(name):
        raise InvalidRequest(f"Kernelspec name {name!r}: use only lowercase letters, digits, "
                             "'.', '_' and '-' (Jupyter's rule)")
    if not provisioner_installed():
        raise PluginError(
            f"No jupyter_client kernel provisioner named {PROVISIONER_NAME!r} is installed, so "
            "Jupyter could not start this kernelspec's kernels: install "
            "runtimed-jupyter-provisioner (pip install runtimed-jupyter-provisioner) first")
    target = kernels_dir(user=user, prefix=prefix) / name
    target.mkdir(parents=True, exist_ok=True)
    tmp = target / ".kernel.json.tmp"
    tmp.write_text(json.dumps(kernelspec(**spec), indent=1) + "\n")
    tmp.replace(target / "kernel.json")
    return target
