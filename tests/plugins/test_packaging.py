"""Every distribution outside the core installs on a fresh machine as its README says: it pins
the postwise versions it was tested with and declares every module it imports (issue 12).

Imports are read from the sources (module level and inside functions); each third-party one
must belong to a distribution the ``dependencies`` name. The README gives the local install
command (postwise is not on a package index yet: pip must get the core from the same command).
"""

from __future__ import annotations

import ast
import importlib.metadata
import sys
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

REPO = Path(__file__).resolve().parents[2]
DISTRIBUTIONS = sorted(
    path.parent.relative_to(REPO)
    for pattern in (
        "plugins/*/pyproject.toml",
        "contrib/*/pyproject.toml",
        "examples/*/pyproject.toml",
    )
    for path in REPO.glob(pattern)
)
CORE_VERSION = tomllib.loads((REPO / "core" / "pyproject.toml").read_text())["project"]["version"]


def _project(folder: Path) -> dict[str, object]:
    project: dict[str, object] = tomllib.loads((REPO / folder / "pyproject.toml").read_text())[
        "project"
    ]
    return project


def _imports(folder: Path) -> set[str]:
    names: set[str] = set()
    for source in (REPO / folder / "src").rglob("*.py"):
        for node in ast.walk(ast.parse(source.read_text(), str(source))):
            if isinstance(node, ast.Import):
                names.update(alias.name.split(".")[0] for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                names.add(node.module.split(".")[0])
    return names


def test_there_are_distributions_to_check() -> None:
    assert len(DISTRIBUTIONS) >= 6, DISTRIBUTIONS


@pytest.mark.parametrize("folder", DISTRIBUTIONS, ids=str)
def test_it_pins_the_postwise_versions_it_was_tested_with(folder: Path) -> None:
    requirements = [Requirement(r) for r in _project(folder)["dependencies"]]  # type: ignore[attr-defined]
    [core] = [r for r in requirements if r.name == "postwise"]
    operators = {spec.operator for spec in core.specifier}
    assert operators & {">=", "~=", "=="}, f"{folder}: no lower bound on postwise"
    assert operators & {"<", "<=", "~=", "=="}, f"{folder}: no upper bound on postwise"
    assert core.specifier.contains(CORE_VERSION), f"{folder}: {core} excludes {CORE_VERSION}"


@pytest.mark.parametrize("folder", DISTRIBUTIONS, ids=str)
def test_it_declares_every_module_it_imports(folder: Path) -> None:
    project = _project(folder)
    declared = {
        canonicalize_name(Requirement(r).name)
        for r in project["dependencies"]  # type: ignore[attr-defined]
    }
    own = {path.name for path in (REPO / folder / "src").iterdir() if path.is_dir()}
    providers = importlib.metadata.packages_distributions()
    missing = []
    for name in sorted(_imports(folder) - own - set(sys.stdlib_module_names) - {"__future__"}):
        dists = {canonicalize_name(d) for d in providers.get(name, [name])}
        if not dists & declared:
            missing.append(f"{name} (from {', '.join(sorted(dists))})")
    assert not missing, f"{folder} imports modules it does not declare: {missing}"


@pytest.mark.parametrize("folder", DISTRIBUTIONS, ids=str)
def test_its_readme_gives_the_local_install_command(folder: Path) -> None:
    readme = (REPO / folder / "README.md").read_text()
    assert f"pip install ./core ./{folder.as_posix()}" in readme, (
        f"{folder}/README.md must say how to install it from this repository: "
        f"`pip install ./core ./{folder.as_posix()}` (postwise is not on a package index yet)"
    )
