"""Parsing requests and project files into EnvSpecs (no builds, no I/O beyond tmp files)."""

from __future__ import annotations

from pathlib import Path

import pytest

from runtimed.config import DaemonConfig
from runtimed_conda_pool.pool import CondaPool
from runtimed_conda_pool.specs import (
    SpecError,
    env_yml_spec,
    inline_spec,
    pixi_spec,
    prewarmed_spec,
    python_spec,
    spec_name,
)

CHANNELS = ["conda-forge"]
PLATFORM = "linux-64"


def inline(section: object) -> dict[str, object]:
    return {"runt": {"conda": section}}


def test_channels_come_from_the_environment(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    monkeypatch.delenv("RUNTIMED_CONDA_CHANNELS", raising=False)
    assert CondaPool(DaemonConfig(cache_dir=tmp_path)).channels == ["conda-forge"]
    monkeypatch.setenv("RUNTIMED_CONDA_CHANNELS", " file:///srv/channel , bioconda,,")
    assert CondaPool(DaemonConfig(cache_dir=tmp_path)).channels == ["file:///srv/channel", "bioconda"]
    explicit = DaemonConfig(cache_dir=tmp_path, settings={"conda.channels": ["mine"]})
    assert CondaPool(explicit).channels == ["mine"], "a flag (or explicit setting) wins over the env"


def test_prewarmed_spec_has_the_kernel_packages_and_the_defaults() -> None:
    spec = prewarmed_spec(CHANNELS, ["numpy", "ipykernel>=6"], PLATFORM)
    assert spec.specs == ("python", "ipywidgets", "numpy", "ipykernel>=6")
    assert spec.channels == ("conda-forge",)
    assert prewarmed_spec(["other"], [], PLATFORM).key != prewarmed_spec(CHANNELS, [], PLATFORM).key


def test_inline_spec_reads_dependencies_channels_and_python() -> None:
    spec = inline_spec(
        inline(
            {
                "dependencies": ["numpy >=1.20", "ipykernel 7.*"],
                "channels": ["bioconda"],
                "python": "3.11",
            }
        ),
        CHANNELS,
        PLATFORM,
    )
    assert spec.kind == "inline"
    assert spec.channels == ("bioconda",)
    # The user's own ipykernel spec replaces the bare base spec.
    assert spec.specs == ("python=3.11", "numpy >=1.20", "ipykernel 7.*", "ipywidgets")
    same = inline_spec(
        inline(
            {
                "dependencies": ["ipykernel 7.*", "numpy >=1.20"],
                "channels": ["bioconda"],
                "python": "3.11",
            }
        ),
        CHANNELS,
        PLATFORM,
    )
    assert same.key == spec.key, "the key does not depend on the order of dependencies"
    assert inline_spec(inline({"dependencies": ["numpy"]}), CHANNELS, PLATFORM).channels == (
        "conda-forge",
    )


@pytest.mark.parametrize(
    ("section", "message"),
    [
        ({"dependencies": "numpy"}, "metadata.runt.conda.dependencies must be a list of strings"),
        (
            {"dependencies": ["numpy"], "channels": "bioconda"},
            "metadata.runt.conda.channels must be a list",
        ),
        (
            {"dependencies": ["numpy"], "python": 3.11},
            "metadata.runt.conda.python must be a version string",
        ),
        ({}, "conda:inline needs metadata.runt.conda.dependencies"),
        ({"dependencies": ["numpy >>1"]}, "invalid conda spec 'numpy >>1'"),
    ],
)
def test_inline_spec_errors_say_what_is_wrong(section: object, message: str) -> None:
    with pytest.raises(SpecError, match=message.replace(".", r"\.").replace("(", r"\(")):
        inline_spec(inline(section), CHANNELS, PLATFORM)


def test_python_spec() -> None:
    assert python_spec("3.11") == "python=3.11"
    assert python_spec(" >=3.10,<3.13 ") == "python >=3.10,<3.13"
    assert [
        spec_name(s) for s in ("conda-forge::numpy >=1", "python=3.11", "scikit-learn", "pip>=23")
    ] == ["numpy", "python", "scikit-learn", "pip"]


ENV_YML = """\
name: analysis
channels:
  - bioconda
  - nodefaults
dependencies:
  - python=3.11
  - samtools >=1.17
  - pip
  - pip:
      - requests==2.31.0
      - ./local-package
      - --index-url https://example.invalid/simple
"""


def test_env_yml_spec(tmp_path: Path) -> None:
    path = tmp_path / "environment.yml"
    spec = env_yml_spec(path, ENV_YML, CHANNELS, PLATFORM)
    assert spec.kind == "env_yml"
    assert spec.channels == ("bioconda",)
    assert spec.specs == ("python=3.11", "samtools >=1.17", "pip", "ipykernel", "ipywidgets")
    assert spec.pip == (
        "requests==2.31.0",
        "./local-package",
        "--index-url https://example.invalid/simple",
    )
    assert spec.pip_cwd == tmp_path
    assert spec.source == path
    changed = env_yml_spec(path, ENV_YML.replace("1.17", "1.18"), CHANNELS, PLATFORM)
    assert changed.key != spec.key, "the key follows the file's content"
    bare = env_yml_spec(path, "dependencies: [numpy]\n", CHANNELS, PLATFORM)
    assert bare.channels == ("conda-forge",), "no channels in the file: the configured ones"


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("dependencies:\n  - numpy\n - scipy\n", "not valid YAML (line 3, column 2)"),
        ("- numpy\n- scipy\n", "expected a mapping with 'channels' and 'dependencies', got list"),
        ("channels: conda-forge\ndependencies: [numpy]\n", "'channels' must be a list"),
        ("dependencies: numpy\n", "'dependencies' must be a list"),
        (
            "dependencies:\n  - numpy\n  - {conda: [scipy]}\n",
            "dependencies[1]: expected a conda spec or a 'pip:' list",
        ),
        ("dependencies:\n  - pip: requests\n", "dependencies[0]: 'pip' must be a list"),
        ("dependencies:\n  - numpy >>1\n", "dependencies: invalid conda spec 'numpy >>1'"),
    ],
)
def test_malformed_env_yml_names_the_file_and_the_problem(
    tmp_path: Path, text: str, problem: str
) -> None:
    path = tmp_path / "environment.yml"
    with pytest.raises(SpecError) as excinfo:
        env_yml_spec(path, text, CHANNELS, PLATFORM)
    assert str(excinfo.value).startswith(f"{path}: ")
    assert problem in str(excinfo.value)


PIXI = """\
[workspace]
name = "analysis"
channels = ["bioconda", {channel = "conda-forge", priority = 1}]
platforms = ["linux-64", "osx-arm64"]

[dependencies]
python = "3.11.*"
numpy = ">=1.26"
samtools = {version = "1.*", channel = "bioconda"}
scipy = "*"

[pypi-dependencies]
requests = "==2.31.0"
rich = {version = ">=13", extras = ["jupyter"]}
local = {path = "./local"}

[target.linux-64.dependencies]
libgcc = "*"

[target.osx-arm64.dependencies]
llvm-openmp = "*"
"""


def test_pixi_spec(tmp_path: Path) -> None:
    path = tmp_path / "pixi.toml"
    spec = pixi_spec(path, PIXI, CHANNELS, PLATFORM)
    assert spec.kind == "pixi"
    assert spec.channels == ("bioconda", "conda-forge")
    assert spec.specs == (
        "python 3.11.*",
        "numpy >=1.26",
        "bioconda::samtools 1.*",
        "scipy",
        "libgcc",
        "ipykernel",
        "ipywidgets",
    )
    assert spec.pip == (
        "requests==2.31.0",
        "rich[jupyter]>=13",
        f"local @ {(tmp_path / 'local').as_uri()}",
    )
    old_style = pixi_spec(path, PIXI.replace("[workspace]", "[project]"), CHANNELS, PLATFORM)
    assert old_style.channels == spec.channels, "[project] works like [workspace]"


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("[dependencies\npython = '3.11'\n", "not valid TOML"),
        ("dependencies = 'numpy'\n", "[dependencies] must be a table"),
        (
            "[dependencies]\nnumpy = 1\n",
            "[dependencies] numpy: expected a version string or a table",
        ),
        ("[dependencies]\nnumpy = {version = '1', git = 'x'}\n", "numpy: unsupported keys ['git']"),
        ("[dependencies]\nnumpy = '>>1'\n", "invalid conda spec 'numpy >>1'"),
        ("[workspace]\nchannels = 'conda-forge'\n", "[workspace] channels must be a list"),
        (
            "[pypi-dependencies]\nrich = 3\n",
            "[pypi-dependencies] rich: expected a version string or a table",
        ),
    ],
)
def test_malformed_pixi_toml_names_the_file_and_the_problem(
    tmp_path: Path, text: str, problem: str
) -> None:
    path = tmp_path / "pixi.toml"
    with pytest.raises(SpecError) as excinfo:
        pixi_spec(path, text, CHANNELS, PLATFORM)
    assert str(excinfo.value).startswith(f"{path}: ")
    assert problem in str(excinfo.value)
