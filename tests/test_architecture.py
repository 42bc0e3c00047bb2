"""The module map of docs/concepts/architecture.md, checked: no import cycle in src/pgq, and
no module imports from a layer above its own."""

from __future__ import annotations

import ast
from pathlib import Path

import pgq

SRC = Path(pgq.__file__).resolve().parent

# Lowest first. A module may import from its own layer or any layer below it.
LAYERS: list[tuple[str, set[str]]] = [
    ("the job's names and limits", {"pgq.job"}),
    ("errors", {"pgq.errors"}),
    (
        "settings and policy",
        {"pgq.config", "pgq.retry", "pgq.signature", "pgq.logs"},
    ),
    (
        "SQL and connections",
        {
            "pgq.queries",
            "pgq.connection",
            "pgq.metrics",
            "pgq.migrate",
            "pgq.contrib",
            "pgq.contrib.sqlalchemy",
        },
    ),
    (
        "operations on jobs",
        {"pgq.enqueue", "pgq.rescue", "pgq.retention", "pgq.roles", "pgq.schedule", "pgq.admin"},
    ),
    ("tasks", {"pgq.tasks", "pgq.middleware"}),
    ("the OpenTelemetry integration", {"pgq.contrib.otel"}),
    ("the worker's parts", {"pgq.worker"}),  # and every pgq.worker.* module
    ("the web app, an extra", {"pgq.web"}),  # and every pgq.web.* module
    (
        "commands and the public package",
        {
            "pgq",
            "pgq.__main__",
            "pgq.bench",
            "pgq.demo",
            "pgq.cli",
            "pgq.cli_admin",
            "pgq.cli_fleet",
            "pgq.cli_shared",
            "pgq.cli_work",
            "pgq.testing",
            "pgq.testing.assertions",
            "pgq.testing.drain",
            "pgq.testing.plugin",
            "pgq.cli_web",
        },
    ),
    # `manage.py pgq_work` runs `pgq work`: above the commands.
    ("the Django integration", {"pgq.contrib.django"}),  # and every pgq.contrib.django.* module
]
#: Packages whose every module sits in the package's own layer.
PACKAGE_LAYERS = ("pgq.worker", "pgq.web", "pgq.contrib.django")


def module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


MODULES = {module_name(path): path for path in SRC.rglob("*.py")}


def absolute(importer: str, module: str | None, level: int) -> str:
    """The module a ``from`` import names, relative ones (``from .x import y``) resolved."""
    if level == 0:
        return module or ""
    package = importer if MODULES[importer].name == "__init__.py" else importer.rpartition(".")[0]
    for _ in range(level - 1):
        package = package.rpartition(".")[0]
    return f"{package}.{module}" if module else package


def imports_of(name: str) -> set[str]:
    """The pgq modules ``name`` imports, at the top or inside a function."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(MODULES[name].read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = absolute(name, node.module, node.level)
            for alias in node.names:
                # `from pgq.worker import outcome` imports the module pgq.worker.outcome.
                submodule = f"{base}.{alias.name}"
                found.add(submodule if submodule in MODULES else base)
    return {module for module in found if module in MODULES and module != name}


GRAPH = {name: imports_of(name) for name in MODULES}


def layer_of(name: str) -> int:
    # pgq.worker.producer is in pgq.worker's layer, and the same for each package here.
    package = next((p for p in PACKAGE_LAYERS if name.startswith(f"{p}.")), None)
    for index, (_, members) in enumerate(LAYERS):
        if name in members or package in members:
            return index
    raise AssertionError(f"{name} is in no layer: add it to LAYERS and the architecture page")


def test_every_module_has_a_layer() -> None:
    for name in MODULES:
        layer_of(name)


def test_no_module_imports_from_a_layer_above_its_own() -> None:
    upward = [
        f"{name} ({LAYERS[layer_of(name)][0]}) imports {target} ({LAYERS[layer_of(target)][0]})"
        for name, targets in GRAPH.items()
        for target in targets
        if layer_of(target) > layer_of(name)
    ]
    assert upward == []


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle, as a path that ends where it starts, or None."""
    state: dict[str, str] = {}  # "open" while on the current path, then "done"
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = "open"
        path.append(node)
        for target in sorted(graph[node]):
            if state.get(target) == "open":
                return [*path[path.index(target) :], target]
            if target not in state and (cycle := visit(target)) is not None:
                return cycle
        path.pop()
        state[node] = "done"
        return None

    for start in sorted(graph):
        if start not in state and (cycle := visit(start)) is not None:
            return cycle
    return None


def test_there_is_no_import_cycle_in_src_pgq() -> None:
    assert find_cycle(GRAPH) is None, " -> ".join(find_cycle(GRAPH) or [])


def test_the_cycle_finder_finds_a_cycle_through_three_modules() -> None:
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}

    assert find_cycle(graph) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_relative_imports_are_resolved_like_absolute_ones() -> None:
    assert absolute("pgq.job", "worker", 1) == "pgq.worker"
    assert absolute("pgq.worker.producer", "executor", 1) == "pgq.worker.executor"
    assert absolute("pgq.worker.producer", "queries", 2) == "pgq.queries"
    assert absolute("pgq.worker", "settings", 1) == "pgq.worker.settings"
    assert absolute("pgq.worker.producer", None, 1) == "pgq.worker"


def test_nothing_below_the_worker_imports_it() -> None:
    below = {name for name in MODULES if layer_of(name) < layer_of("pgq.worker")}

    assert not {name for name in below if any(t.startswith("pgq.worker") for t in GRAPH[name])}


# The web extra's libraries: only pgq.web may import them (pgq.cli_web, inside its command).
WEB_LIBRARIES = ("starlette", "jinja2", "uvicorn")


def third_party_imports(name: str) -> set[str]:
    found: set[str] = set()
    for node in ast.walk(ast.parse(MODULES[name].read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module.split(".")[0])
    return found


def test_nothing_outside_pgq_web_imports_the_web_extras_libraries() -> None:
    importers = {
        name
        for name in MODULES
        if not name.startswith("pgq.web") and name != "pgq.cli_web"
        and third_party_imports(name) & set(WEB_LIBRARIES)
    }  # fmt: skip

    assert importers == set()


def test_pgq_cli_web_imports_the_extra_only_inside_its_command() -> None:
    tree = ast.parse(MODULES["pgq.cli_web"].read_text())
    top_level = {
        alias.name.split(".")[0] if isinstance(node, ast.Import) else (node.module or "")
        for node in tree.body
        if isinstance(node, ast.Import | ast.ImportFrom)
        for alias in node.names
    }

    assert not top_level & {*WEB_LIBRARIES, "pgq.web"}
