"""The package's layers: every import (module- or function-level) goes to the same or a lower
layer, and no set of modules imports itself round in a cycle. Read from the source, so a lazy
import inside a function counts as much as one at the top."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

import llmft

# lowest first: a module may import its own layer and the ones before it
LAYERS = ("core", "runtime", "models", "data", "tasks", "strategies", "artifacts", "techniques", "commands", "cli")
ROOT = Path(llmft.__file__).parent


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def layer(module: str) -> int:
    """The layer of llmft.<layer>...; llmft itself (its version) sits with core."""
    parts = module.split(".")
    if len(parts) == 1:
        return 0
    if parts[1] not in LAYERS:
        raise AssertionError(f"{module}: not in a layer; put it under one of llmft/{{{','.join(LAYERS)}}}")
    return LAYERS.index(parts[1])


def imports(path: Path, modules: set[str]) -> list[tuple[str, int]]:
    """(llmft module, line) for every import in the file; ``from pkg import mod`` names the module."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found += [(a.name, node.lineno) for a in node.names if a.name.split(".")[0] == "llmft"]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative import: from the file's package up
                package = module_name(path) if path.name == "__init__.py" else module_name(path).rpartition(".")[0]
                base = ".".join([*package.split(".")[: len(package.split(".")) - node.level + 1], *filter(None, [base])])
            if base.split(".")[0] != "llmft":
                continue
            found.append((base, node.lineno))
            found += [(f"{base}.{a.name}", node.lineno) for a in node.names if f"{base}.{a.name}" in modules]
    return found


def graph() -> dict[str, list[tuple[str, int]]]:
    files = {module_name(p): p for p in ROOT.rglob("*.py") if "configs" not in p.parts}
    return {name: [(t, line) for t, line in imports(path, set(files)) if t in files and t != name]
            for name, path in files.items()}


def test_every_module_is_in_a_layer_and_imports_only_down():
    upward = [f"{m} (layer {LAYERS[layer(m)]}) imports {t} (layer {LAYERS[layer(t)]}) at line {line}"
              for m, targets in graph().items() for t, line in targets if layer(t) > layer(m)]
    assert not upward, "\n".join(upward)


def test_no_import_cycles():
    edges = {m: sorted({t for t, _ in targets}) for m, targets in graph().items()}
    index, low, stack, on_stack, cycles = {}, {}, [], set(), []

    def visit(node):  # Tarjan's strongly connected components
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in edges[node]:
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for node in edges:
        if node not in index:
            visit(node)
    assert not cycles, f"import cycles: {cycles}"


@pytest.mark.parametrize("source,expected", [
    ("from llmft.cli.app import run\n", "llmft.cli.app"),
    ("def f():\n    from llmft.commands import train\n", "llmft.commands.train"),
])
def test_the_reader_sees_every_kind_of_import(tmp_path, source, expected):
    """Guard the guard: function-level imports and `from package import module` are read."""
    fake = tmp_path / "m.py"
    fake.write_text(source)
    assert expected in {t for t, _ in imports(fake, {"llmft.commands.train", "llmft.cli.app"})}
