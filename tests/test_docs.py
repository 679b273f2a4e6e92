"""Documentation stays complete: every hook spec is documented."""

from __future__ import annotations

import re
from pathlib import Path

from postwise import hookspecs

ROOT = Path(__file__).resolve().parents[1]


def test_every_hook_is_documented_in_the_hook_reference() -> None:
    documented = set(
        re.findall(r"^### (postwise_\w+)$", (ROOT / "docs" / "plugin-hooks.md").read_text(), re.M)
    )
    specs = {name for name in dir(hookspecs) if name.startswith("postwise_")}
    assert specs, "no hook specs found"
    assert specs - documented == set(), "hooks missing from docs/plugin-hooks.md"
    assert documented - specs == set(), "docs/plugin-hooks.md documents hooks that do not exist"


def test_every_hook_has_a_docstring() -> None:
    for name in dir(hookspecs):
        if name.startswith("postwise_"):
            assert (getattr(hookspecs, name).__doc__ or "").strip(), name
