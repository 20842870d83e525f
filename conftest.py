"""The project's own tests never read the developer's runtimed configuration file, and never
follow a Conductor worktree's ``CONDUCTOR_WORKSPACE_PATH`` (each test that wants one sets it)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest


@pytest.fixture(autouse=True, scope="session")
def _no_user_configuration(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("RUNTIMED_CONFIG_FILE", str(tmp_path_factory.mktemp("config") / "runtimed.toml"))
        mp.delenv("CONDUCTOR_WORKSPACE_PATH", raising=False)
        yield
