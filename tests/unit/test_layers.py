"""The package's layers, as README.md and docs/architecture.md draw them: every import, those
inside functions included, goes from a module to its own folder or to a layer below.

Nothing is imported here: the modules are read as text (``ast``), so the check needs no Ray.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[2] / "distributed_grid"

# Top to bottom; the folders of one layer stand side by side and do not import each other.
LAYERS: list[tuple[str, ...]] = [
    ("cli", "orchestration"),
    ("memory.pool", "memory"),  # the pool, and memory/__init__.py (connect, the public names)
    ("memory.values", "memory.client"),
    ("cluster",),
    ("memory.node",),
    ("memory.shm", "memory.io"),
    ("", "errors", "names", "sizes", "records", "runtime", "wire", "_ray"),  # the foundation
]
FOLDERS = {"cli", "orchestration", "memory.values", "memory.client", "cluster", "memory.node",
           "memory.shm", "memory.io"}


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def place(name: str) -> tuple[int, str]:
    """(layer, group) of a module named relative to the package ("" is the package itself)."""
    for layer, groups in enumerate(LAYERS):
        for group in groups:
            if name == group or (group in FOLDERS and name.startswith(group + ".")):
                return layer, group if group in FOLDERS else f"layer {layer}"
    raise AssertionError(f"distributed_grid.{name} is in no layer: place it in the drawing "
                         "(README.md, docs/architecture.md) and in LAYERS here")


def imports_of(path: Path, modules: set[str]) -> set[str]:
    """The package's modules ``path`` imports, relative to the package."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        else:
            assert not isinstance(node, ast.ImportFrom), f"{path}: a relative import"
            continue
        for name in names:
            if name == "distributed_grid" or name.startswith("distributed_grid."):
                relative = name.removeprefix("distributed_grid").removeprefix(".")
                if relative in modules:
                    found.add(relative)
    return found


def test_every_import_goes_to_its_own_folder_or_down():
    paths = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    wrong = []
    for name, path in sorted(paths.items()):
        layer, group = place(name)  # modules of a layer that is no folder form one group
        for target in sorted(imports_of(path, set(paths))):
            to_layer, to_group = place(target)
            if to_group != group and to_layer <= layer:
                wrong.append(f"distributed_grid.{name} (layer {layer}, {group}) imports "
                             f"distributed_grid.{target} (layer {to_layer}, {to_group})")
    assert not wrong, "imports against the layers:\n" + "\n".join(wrong)


def test_every_folder_of_the_package_has_its_layer():
    folders = {module_name(p) for p in PACKAGE.rglob("__init__.py")} - {""}
    for folder in folders:
        place(folder)
