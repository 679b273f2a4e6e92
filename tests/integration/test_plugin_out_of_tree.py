"""A plugin made from ``examples/`` installs and passes its own tests outside this repository.

What a third-party plugin author does: copy the example to a folder of their own, ``pip
install`` postwise and the plugin, run ``pytest``. The tests find their fixtures through the
postwise pytest plugin (the ``pytest11`` entry point), never through this repository's
conftest. Offline and local: a virtual environment that sees this machine's packages
(``--system-site-packages``) gets this checkout's postwise and the copied plugin from local
paths only (``--no-index``); nothing of the repository is on the path.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
IGNORED = shutil.ignore_patterns("*.egg-info", "build", "dist", "__pycache__", ".pytest_cache")


def _run(command: list[str], *, cwd: Path, env: dict[str, str]) -> str:
    done = subprocess.run(
        command, cwd=cwd, env=env, capture_output=True, text=True, timeout=600, check=False
    )
    assert done.returncode == 0, f"{' '.join(command)}\n{done.stdout}\n{done.stderr}"
    return done.stdout


@pytest.mark.slow
def test_a_plugin_from_the_example_installs_and_passes_its_tests_elsewhere(
    tmp_path: Path,
) -> None:
    core = tmp_path / "postwise-core"
    plugin = tmp_path / "my-plugin"
    shutil.copytree(REPO / "core", core, ignore=IGNORED)
    shutil.copytree(REPO / "examples" / "custom-condition", plugin, ignore=IGNORED)
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", venv], check=True)
    python = str(venv / "bin" / "python")
    # Nothing of this repository or this test session leaks in: no PYTHONPATH, no test servers.
    env = {
        key: value
        for key, value in os.environ.items()
        if key != "PYTHONPATH" and not key.startswith(("POSTWISE_", "PYTEST_"))
    }
    pip = [python, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--no-build-isolation"]
    _run([*pip, str(core)], cwd=tmp_path, env=env)
    _run([*pip, str(plugin)], cwd=tmp_path, env=env)

    # The environment's postwise is the one just installed, and it registers the kit once.
    probe = (
        "import importlib.metadata as m, postwise, postwise_example_ltv\n"
        "print(postwise.__file__)\n"
        "print(sorted({e.value for e in m.entry_points(group='pytest11')"
        " if e.value.startswith('postwise')}))\n"
    )
    where, plugins = _run([python, "-c", probe], cwd=tmp_path, env=env).splitlines()
    assert where.startswith(str(venv)), where
    assert plugins == "['postwise.testing.plugin']", plugins

    out = _run(
        [python, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "no:xdist", "tests"],
        cwd=plugin,
        env=env,
    )
    assert " passed" in out and "failed" not in out and "error" not in out.lower(), out
