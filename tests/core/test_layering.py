"""The layering of postwise, read from the code's own imports (an import-linter contract in code).

A *subsystem* is the first name under ``postwise/`` (a package, or a top-level module such as
``runtime``). Subsystems are layered: a subsystem imports only subsystems of lower layers, never
one above it or a sibling of its own layer; no product module imports the tooling; no import
crosses subsystems from inside a function (which is how a cycle hides); and there is no cycle
between subsystems at all. ``TYPE_CHECKING`` imports, for annotations only, are not imports.

docs/architecture.md draws the layers and the two main data paths.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

import postwise

ROOT = Path(postwise.__file__).parent

#: Entry points and tooling: they may import anything; no product module imports them. The CLI
#: and the dev tools load their commands lazily (inside functions, or by name) so that start-up
#: stays fast; that is the one place an import inside a function is the design.
TOOLING = frozenset({"cli", "devtools", "testing"})

#: Product layers, highest first.
LAYERS: tuple[frozenset[str], ...] = (
    frozenset({"ui"}),  # the dashboard: pages over every subsystem
    frozenset({"journeys"}),  # multi-step flows, built on triggers
    frozenset({"triggers"}),  # decides when to send
    frozenset({"crm"}),  # CRM sync; its jobs run on delivery's RQ workers
    frozenset({"delivery"}),  # turns a decision into a settled message
    frozenset({"experiments"}),  # assignment, statistics, decisions
    frozenset({"recommend"}),  # recommendations that content and delivery read from
    frozenset({"compliance", "content"}),  # the rules every send passes; rendering
    frozenset({"analytics"}),  # events in and out, metrics
    frozenset({"streams"}),  # the event stream: publish and the consumer-group base
    frozenset({"contacts"}),  # people, segments
    # The ground floor: runtime, plugins and registries, settings, the database, the HTTP
    # shell (its controllers come from the subsystems' plugins, never by import), processes'
    # heartbeats, and small shared modules. It imports no subsystem above it.
    frozenset(
        {
            "server",
            "ops",
            "runtime",
            "plugins",
            "registry",
            "hookspecs",
            "settings",
            "options",
            "db",
            "events",
            "errors",
            "redis_client",
            "httputil",
            "tokens",
            "apikeys",
        }
    ),
)

#: Imports that break the layering today, each with the work that removes it. The lists may
#: only shrink: a new violation fails, and so does an entry that no longer occurs (delete it).
KNOWN_UPWARD: frozenset[tuple[str, str]] = frozenset()
#: Imports inside functions still to move to the top of their modules.
KNOWN_LAZY: frozenset[tuple[str, str]] = KNOWN_UPWARD | {
    # the journey engine's submit (issue 20)
    ("postwise.journeys.engine", "postwise.delivery.dispatch"),
}

#: Imports inside a function that are there on purpose, not to hide a cycle.
DELIBERATE_LAZY = frozenset(
    {
        # ``postwise.track`` (PEP 562 module attribute): importing the package for a plugin's
        # ``hookimpl`` must not load analytics, which itself imports ``postwise``.
        ("postwise", "postwise.analytics.ingest"),
    }
)


@dataclass(frozen=True, slots=True)
class Import:
    module: str  # the importing module
    target: str  # the module imported
    line: int
    in_function: bool

    @property
    def source(self) -> str:
        return subsystem(self.module)

    @property
    def destination(self) -> str:
        return subsystem(self.target)

    def __str__(self) -> str:
        where = " (inside a function)" if self.in_function else ""
        return f"{self.module}:{self.line} imports {self.target}{where}"


def subsystem(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    name = ".".join(parts)
    return name.removesuffix(".__init__")


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _resolve(module: str, is_package: bool, node: ast.ImportFrom) -> str:
    if not node.level:
        return node.module or ""
    base = module.split(".")
    base = base[: len(base) - node.level + (1 if is_package else 0)]
    return ".".join([*base, *([node.module] if node.module else [])])


def _targets(module: str, is_package: bool, node: ast.Import | ast.ImportFrom) -> list[str]:
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    target = _resolve(module, is_package, node)
    # ``from postwise.x import y`` may import the module ``postwise.x.y``: count the deepest.
    found = []
    for alias in node.names:
        candidate = f"{target}.{alias.name}"
        found.append(candidate if _is_module(candidate) else target)
    return found


def _is_module(name: str) -> bool:
    path = ROOT.parent.joinpath(*name.split("."))
    return path.with_suffix(".py").exists() or (path / "__init__.py").exists()


def _visit(module: str, is_package: bool, node: ast.AST, in_function: bool) -> Iterator[Import]:
    for child in ast.iter_child_nodes(node):
        if isinstance(child, ast.If) and _is_type_checking(child):
            for orelse in child.orelse:
                yield from _visit(module, is_package, orelse, in_function)
            continue
        inner = in_function or isinstance(
            child, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda
        )
        if isinstance(child, ast.Import | ast.ImportFrom):
            for target in _targets(module, is_package, child):
                if target.startswith("postwise.") and _is_module(target):
                    yield Import(module, target, child.lineno, in_function)
        yield from _visit(module, is_package, child, inner)


def imports() -> Iterator[Import]:
    """Every import of a postwise module by a postwise module, outside TYPE_CHECKING."""
    for path in sorted(ROOT.rglob("*.py")):
        if "migrations" in path.parts:
            continue
        tree = ast.parse(path.read_text(), str(path))
        yield from _visit(_module_name(path), path.name == "__init__.py", tree, False)


ALL = list(imports())
CROSSING = [i for i in ALL if i.source != i.destination]


def _layer(name: str) -> int | None:
    for index, layer in enumerate(LAYERS):
        if name in layer:
            return index
    return None


def _subsystems() -> set[str]:
    names = {subsystem(_module_name(p)) for p in ROOT.rglob("*.py") if "migrations" not in p.parts}
    names.discard("__init__")
    return names


def test_every_subsystem_has_a_place_in_the_layers() -> None:
    placed = set(TOOLING).union(*LAYERS)
    missing = sorted(_subsystems() - placed)
    assert not missing, (
        f"new subsystems {missing}: add each to LAYERS (or TOOLING) in {__file__}, where its "
        "imports say it belongs"
    )
    listed = sorted(placed - _subsystems())
    assert not listed, f"LAYERS names subsystems that do not exist: {listed}"


def _violations() -> list[Import]:
    found = []
    for item in CROSSING:
        source, destination = item.source, item.destination
        if source in TOOLING:
            continue
        if destination in TOOLING:
            found.append(item)
            continue
        if source == "__init__":
            continue  # the package itself; its one import is checked as a lazy one below
        above, below = _layer(source), _layer(destination)
        if above is None or below is None:
            continue  # reported by test_every_subsystem_has_a_place_in_the_layers
        ground = len(LAYERS) - 1
        if above == below == ground:
            continue  # inside the ground floor only cycles are forbidden (checked below)
        if below <= above:
            found.append(item)
    return found


def test_imports_go_down_the_layers_and_never_into_the_tooling() -> None:
    found = _violations()
    new = [str(i) for i in found if (i.module, i.target) not in KNOWN_UPWARD]
    assert not new, (
        "imports that go up or sideways in the layering (or into cli/devtools/testing):\n  "
        + "\n  ".join(new)
    )
    gone = sorted(KNOWN_UPWARD - {(i.module, i.target) for i in found})
    assert not gone, f"fixed: delete them from KNOWN_UPWARD: {gone}"


def test_no_import_crosses_subsystems_from_inside_a_function() -> None:
    hidden = [
        str(i)
        for i in dict.fromkeys(CROSSING)
        if i.in_function
        and i.source not in TOOLING
        and (i.module, i.target) not in DELIBERATE_LAZY | KNOWN_LAZY
    ]
    assert not hidden, (
        "imports of another subsystem inside a function (move them to the top of the module; "
        "if that makes a cycle, the layering is wrong, not the import):\n  " + "\n  ".join(hidden)
    )
    lazy = {(i.module, i.target) for i in CROSSING if i.in_function}
    gone = sorted(KNOWN_LAZY - lazy)
    assert not gone, f"moved to module level: delete them from KNOWN_LAZY: {gone}"


def _cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def strong(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for other in sorted(edges.get(node, ())):
            if other not in index:
                strong(other)
                low[node] = min(low[node], low[other])
            elif other in on_stack:
                low[node] = min(low[node], index[other])
        if low[node] == index[node]:
            component = []
            while True:
                other = stack.pop()
                on_stack.discard(other)
                component.append(other)
                if other == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(edges):
        if node not in index:
            strong(node)
    return found


def test_there_is_no_cycle_between_subsystems() -> None:
    edges: dict[str, set[str]] = {}
    for item in CROSSING:
        if (item.module, item.target) in KNOWN_UPWARD:
            continue
        edges.setdefault(item.source, set()).add(item.destination)
    assert _cycles(edges) == []


def test_the_cycle_finder_finds_a_cycle() -> None:
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


@pytest.mark.parametrize("name", ["delivery", "compliance", "analytics"])
def test_the_reader_sees_module_level_imports(name: str) -> None:
    # Guard against a reader that silently finds nothing (a wrong root, a parser change).
    assert any(i.source == name and not i.in_function for i in CROSSING)
