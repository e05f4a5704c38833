"""Packaging: conda and pip agree, torch is pinned and installed first, CI runs make test."""

from __future__ import annotations

import tomllib
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]


def _name(requirement: str) -> str:
    for sep in "<>=!~[ ":
        requirement = requirement.split(sep)[0]
    return requirement.strip().lower()


def test_environment_yml_matches_pyproject_dependencies():
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    wanted = {
        _name(r): r for r in project["dependencies"] + project["optional-dependencies"]["dev"]
    }
    env = yaml.safe_load((REPO / "environment.yml").read_text())
    pip = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict) and "pip" in d)
    listed = {_name(r): r for r in pip}
    assert set(listed) == set(wanted)
    for name, req in listed.items():
        if name != "torch":
            assert req.replace(" ", "") == wanted[name].replace(" ", ""), name
    assert pip[0] == "torch==2.13.0"  # first, pinned to the CPU build


def test_no_cuda_pulling_dependencies():
    text = (REPO / "pyproject.toml").read_text().lower()
    deps = " ".join(tomllib.loads(text)["project"]["dependencies"])
    assert "torchvision" not in deps and "timm" not in deps


def test_makefile_installs_torch_before_the_package_and_ci_runs_make_test():
    makefile = (REPO / "Makefile").read_text()
    assert makefile.index("pip install torch==2.13.0") < makefile.index('pip install -e ".[dev]"')
    assert "make test" in (REPO / ".ci" / "run").read_text()
    readme = (REPO / "README.md").read_text()
    assert "make demo" in readme and "make test" in readme
