"""env_source resolution: project files, inline deps, PEP 723, families."""

from __future__ import annotations

import pytest

from runtimed.envsource import find_project_file, pep723_block, resolve
from runtimed.errors import EnvironmentFailed, InvalidRequest
from runtimed.plugins import Registry
from runtimed.pools import EnvPool, InlineDependencies, ProjectFile, ScriptBlock

PEP723 = "# /// script\n# dependencies = [\n#   \"six\",\n# ]\n# ///\nimport six\n"
# The installed pools' declarations, as the daemon reads them.
POOLS = list(Registry.load().pools.values())
PROJECT_FILES = [p for pool in POOLS for p in pool.project_files]


def _resolve(request="auto", path=None, metadata=None, cells=(), family="uv", pools=None):
    return resolve(request, pools=POOLS if pools is None else pools, default_family=family,
                   notebook_path=path, metadata=metadata or {}, cell_sources=cells)


@pytest.fixture
def tree(tmp_path):
    (tmp_path / ".git").mkdir()
    (tmp_path / "a" / "b").mkdir(parents=True)
    return tmp_path


def test_nothing_declared_is_the_prewarmed_pool(tree):
    assert _resolve(path=tree / "a" / "nb.ipynb").env_source == "uv:prewarmed"
    assert _resolve("prewarmed", family="conda").env_source == "conda:prewarmed"
    assert _resolve("auto:conda").env_source == "conda:prewarmed"


def test_tool_only_pyproject_is_not_a_project(tree):
    (tree / "pyproject.toml").write_text("[project]\nname='outer'\n")
    (tree / "a" / "pyproject.toml").write_text("[tool.ruff]\nline-length = 100\n")
    r = _resolve(path=tree / "a" / "nb.ipynb")
    assert r.env_source == "uv:pyproject" and r.project_file == tree / "pyproject.toml"
    (tree / "a" / "pyproject.toml").write_text("[tool.uv.workspace]\nmembers = []\n")
    assert _resolve(path=tree / "a" / "nb.ipynb").project_file == tree / "a" / "pyproject.toml"


def test_closest_project_file_wins(tree):
    (tree / "pyproject.toml").write_text("[project]\nname='x'\n")
    (tree / "a" / "environment.yml").write_text("dependencies: [python]\n")
    nb = tree / "a" / "b" / "nb.ipynb"
    r = _resolve(path=nb)
    assert r.env_source == "conda:env_yml" and r.project_file == tree / "a" / "environment.yml"
    # within the uv family the conda file is invisible: the pyproject above is found
    assert _resolve("auto:uv", path=nb).project_file == tree / "pyproject.toml"


def test_same_directory_tie_break(tree):
    for name in ("environment.yaml", "environment.yml", "pixi.toml"):
        (tree / "a" / name).write_text("")
    (tree / "a" / "pyproject.toml").write_text("[project]\nname = 'p'\n")
    assert _resolve(path=tree / "a" / "nb.ipynb").env_source == "uv:pyproject"
    (tree / "a" / "pyproject.toml").unlink()
    assert _resolve(path=tree / "a" / "nb.ipynb").env_source == "conda:pixi"
    (tree / "a" / "pixi.toml").unlink()
    assert _resolve(path=tree / "a" / "nb.ipynb").project_file.name == "environment.yml"


def test_walk_stops_at_git_boundary_and_home(tmp_path):
    (tmp_path / "pyproject.toml").write_text("[project]\nname = 'p'\n")
    repo = tmp_path / "repo"
    (repo / ".git").mkdir(parents=True)
    assert find_project_file(repo / "nb.ipynb", PROJECT_FILES) is None
    home = tmp_path / "home"
    (home / "work").mkdir(parents=True)
    assert find_project_file(home / "work" / "nb.ipynb", PROJECT_FILES, home=home) is None


def test_inline_then_pep723_order(tree):
    meta = {"runt": {"uv": {"dependencies": ["six"]}, "conda": {"dependencies": ["numpy"]}}}
    assert _resolve(metadata=meta, cells=[PEP723]).env_source == "uv:inline"
    assert _resolve(metadata=meta, family="conda").env_source == "conda:inline"
    assert _resolve(cells=["x = 1", PEP723]).env_source == "uv:pep723"
    assert _resolve("auto:conda", cells=[PEP723]).env_source == "conda:prewarmed"
    # a project file beats inline deps
    (tree / "pyproject.toml").write_text("[project]\nname = 'p'\n")
    assert _resolve(path=tree / "nb.ipynb", metadata=meta).env_source == "uv:pyproject"


def test_pep723_block_content():
    assert pep723_block(["print(1)", PEP723]) == 'dependencies = [\n  "six",\n]\n'
    assert pep723_block(["# /// other\n# x = 1\n# ///\n"]) is None


def test_bad_requests():
    with pytest.raises(EnvironmentFailed, match="'pip' family, and none is installed"):
        _resolve("pip:magic")
    with pytest.raises(InvalidRequest, match="Unknown env_source 'uv:magic'; use one of .*uv:inline"):
        _resolve("uv:magic")
    with pytest.raises(InvalidRequest, match="Unknown env_source 'magic'"):
        _resolve("magic")
    with pytest.raises(InvalidRequest, match="list of strings"):
        _resolve(metadata={"runt": {"uv": {"dependencies": "six"}}})
    assert _resolve("uv:inline").env_source == "uv:inline"  # concrete values pass through


class HatchPool(EnvPool):
    """A third party's declarations only: resolution needs nothing else."""

    family = "hatch"
    sources = ("hatch:prewarmed", "hatch:project", "hatch:inline", "hatch:script")
    project_files = (ProjectFile("hatch.toml", "hatch:project", rank=5),)
    inline_dependencies = (InlineDependencies("runt.hatch.dependencies", "hatch:inline"),)
    script_blocks = (ScriptBlock("hatch-script", "hatch:script"),)


def test_any_family_resolves_from_its_declarations(tree):
    pools = [*POOLS, HatchPool]
    nb = tree / "a" / "nb.ipynb"
    assert _resolve("auto:hatch", path=nb, pools=pools).env_source == "hatch:prewarmed"
    assert _resolve("prewarmed", family="hatch", pools=pools).env_source == "hatch:prewarmed"
    assert _resolve(family="hatch", pools=pools).env_source == "hatch:prewarmed"
    block = "# /// hatch-script\n# x = 1\n# ///\n"
    assert _resolve(cells=[block], pools=pools).env_source == "hatch:script"
    meta = {"runt": {"hatch": {"dependencies": ["six"]}}}
    assert _resolve(metadata=meta, pools=pools).env_source == "hatch:inline"
    (tree / "a" / "pyproject.toml").write_text("[project]\nname = 'p'\n")
    (tree / "a" / "hatch.toml").write_text("")
    r = _resolve(path=nb, pools=pools)  # rank 5 beats pyproject.toml's 10 in the same directory
    assert (r.env_source, r.project_file) == ("hatch:project", tree / "a" / "hatch.toml")
    assert _resolve("auto:uv", path=nb, pools=pools).env_source == "uv:pyproject"


def test_no_default_family_is_a_clear_error():
    with pytest.raises(InvalidRequest, match="needs a default environment family"):
        _resolve("auto", family=None, pools=[HatchPool])
    assert _resolve("auto:hatch", family=None, pools=[HatchPool]).env_source == "hatch:prewarmed"
