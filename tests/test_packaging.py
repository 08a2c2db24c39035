"""Packaging: environment.yml parses and its pip list is exactly pyproject's dependencies; CI calls the README."""

import re
import tomllib
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent


def pyproject_requirements() -> list[str]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    extras = project["optional-dependencies"]
    return project["dependencies"] + [d for name in sorted(extras) for d in extras[name]]


def test_environment_yml_pip_list_matches_pyproject():
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    pip = [d for d in env["dependencies"] if isinstance(d, dict)][0]["pip"]
    assert sorted(pip) == sorted(pyproject_requirements())
    assert any(str(d).startswith("python=") for d in env["dependencies"])


def test_torch_is_pinned_so_no_cuda_build_is_pulled():
    assert "torch==2.13.0" in pyproject_requirements()


def test_ci_runs_the_readme_test_command():
    readme = (ROOT / "README.md").read_text()
    commands = re.findall(r"^(bash scripts/\S+\.sh)\s*$", readme, flags=re.M)
    assert "bash scripts/run_tests.sh" in commands and "bash scripts/run_pipeline.sh" in commands
    assert "bash scripts/run_tests.sh" in (ROOT / ".ci" / "run").read_text()
