"""The package's layers, pinned by parsing every import under src/ (TYPE_CHECKING and lazy ones too).

Bottom up: the pure core; the OS/SDK boundaries and observability (each on the core only); the tree
(supervisor, hub, cell, board, build table and one `serve_*` module per child); the embedding facade;
the daemon; the CLI. A layer imports only layers below it; tree children never import each other.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import stigmer_trio

PACKAGE = Path(stigmer_trio.__file__).parent
ROOT = "stigmer_trio"

# Which layers each layer may import (its own included).
ALLOWED = {
    "core": {"core"},
    "boundary": {"core", "boundary"},
    "observe": {"core", "observe"},
    "tree": {"core", "boundary", "observe", "tree"},
    "runtime": {"core", "boundary", "observe", "tree", "runtime"},
    "daemon": {"core", "boundary", "observe", "tree", "runtime", "daemon"},
    "cli": {"core", "boundary", "observe", "tree", "runtime", "daemon", "cli"},
    "testing": {"core", "testing"},
    # the pytest plugin: the session's daemon (process identity, state files) and runtimes against it
    "plugin": {"core", "boundary", "runtime", "testing", "plugin"},
}
# Third-party packages a layer may not import, whatever its place.
FOREIGN_BANNED = {
    "core": {"trio", "trio_asyncio", "temporalio", "psutil", "prometheus_client", "hypercorn"},
    "observe": {"trio", "trio_asyncio", "temporalio", "psutil"},
}
# The only importers of temporalio: the bridge, the demo's workflow definitions (the workflow
# sandbox re-imports that module, so it cannot be the bridge, which imports trio), and the SDK's
# environment configuration (temporalio.envconfig, read by the CLI before any trio or bridge exists).
TEMPORALIO_IMPORTERS = {
    "stigmer_trio._boundary._temporal",
    "stigmer_trio._boundary._demo",
    "stigmer_trio._boundary._envprofile",
}
# Tree modules every child may share; the rest of the tree (build table, status board) wires children.
TREE_SHARED = {"_supervisor", "_hub", "_cell"}
STATE_FILES = ("runtime.json", "runtime.lock", "devserver.json", "devserver.lock", "daemon.log",
               "devserver.log", "temporal.db", "outbox.db")  # fmt: skip


def modules() -> dict[str, Path]:
    found = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE).with_suffix("").parts
        name = ".".join((ROOT, *parts))
        found[name.removesuffix(".__init__")] = path
    return found


MODULES = modules()


def layer(module: str) -> str:
    parts = module.split(".")
    first = parts[1] if len(parts) > 1 else "__init__"
    return {
        "_core": "core",
        "_version": "core",
        "_boundary": "boundary",
        "_observe": "observe",
        "_tree": "tree",
        "_runtime": "runtime",
        "_daemon": "daemon",
        "_cli": "cli",
        "__main__": "cli",
        "testing": "testing",
        "_faultproxy": "testing",
        "_testing_plugin": "plugin",
        "__init__": "package",
    }[first]


def imports(module: str) -> set[str]:
    """Every module `module` imports, absolute (ours resolved to a module of the package)."""
    path = MODULES[module]
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                target = f"{base}.{node.module}" if node.module else base
            else:
                target = node.module or ""
            for alias in node.names:
                candidate = f"{target}.{alias.name}"
                found.add(candidate if candidate in MODULES else target)
    return found


def ours(module: str) -> set[str]:
    return {name for name in imports(module) if name in MODULES and name != ROOT}


@pytest.mark.parametrize("module", sorted(MODULES))
def test_imports_only_lower_layers(module: str) -> None:
    """A module imports only its own layer and the layers below it."""
    here = layer(module)
    if here == "package":
        return  # the lazy re-export table names every layer, under TYPE_CHECKING
    wrong = sorted(name for name in ours(module) if layer(name) not in ALLOWED[here])
    assert [] == wrong, f"{module} ({here}) imports {wrong}"


@pytest.mark.parametrize("module", sorted(MODULES))
def test_no_forbidden_third_party(module: str) -> None:
    """The core and observability stay pure: no trio, temporalio, psutil (and friends) there."""
    banned = FOREIGN_BANNED.get(layer(module), set())
    wrong = sorted(name for name in imports(module) if name.split(".")[0] in banned)
    assert [] == wrong, module


def test_only_the_boundary_imports_temporalio() -> None:
    """temporalio is imported by the bridge and the demo workflows only."""
    importers = {m for m in MODULES if any(n.split(".")[0] == "temporalio" for n in imports(m))}
    assert TEMPORALIO_IMPORTERS == importers


def test_tree_children_never_import_each_other() -> None:
    """A `serve_*` module imports no other child, nor the build table or the status board: siblings
    share only what _build creates and passes in."""
    for module in MODULES:
        if module.startswith(f"{ROOT}._tree._serve_"):
            tree = {n.rpartition(".")[2] for n in ours(module) if n.startswith(f"{ROOT}._tree.")}
            assert tree <= TREE_SHARED, f"{module} imports {sorted(tree - TREE_SHARED)}"


def test_shared_tree_modules_know_no_child() -> None:
    """The supervisor, the hub and the cell import no child module."""
    for name in TREE_SHARED:
        module = f"{ROOT}._tree.{name}"
        tree = {n.rpartition(".")[2] for n in ours(module) if n.startswith(f"{ROOT}._tree.")}
        assert tree <= TREE_SHARED, module


def test_signal_handling_only_in_the_daemon() -> None:
    """Only the daemon installs signal handlers: never the modules an embedding program imports."""
    handlers = {"open_signal_receiver", "signal.signal", "set_wakeup_fd"}
    for module, path in MODULES.items():
        text = path.read_text()
        found = {h for h in handlers if h in text}
        if module != f"{ROOT}._daemon":
            assert set() == found, module


def test_layers_cover_every_module() -> None:
    """Every module of the package belongs to a layer (a new subpackage needs a place here)."""
    assert all(layer(module) for module in MODULES)


def test_state_file_names_are_spelled_once() -> None:
    """The state dir's file names appear in _core/_layout.py only (messages may name them)."""
    for module, path in MODULES.items():
        if module == f"{ROOT}._core._layout":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Constant) and isinstance(node.value, str):
                for name in STATE_FILES:
                    assert node.value != name, (module, name)
