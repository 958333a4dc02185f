"""The documentation names what the repository has: every link, file path and module that
README.md, docs/ and the folders' READMEs name exists, and none points outside the repository.

Paths are read from the ``code`` spans of the text (``memory/node/store.py``, ``tests/unit/``),
resolved against the repository, the package and the document's own folder; module names
(``distributed_grid.memory.values.arrays.put``) against the package's files, without importing
them. A moved module whose old path a document still names fails here by name.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "distributed_grid"
DOCUMENTS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")),
             *(ROOT / folder / "README.md" for folder in ("examples", "benchmarks", "tests",
                                                          "native"))]

_LINK = re.compile(r"\]\(([^)\s]+)\)")
_CODE = re.compile(r"`([^`\n]+)`")
_PATH = re.compile(r"[\w.-]+(/[\w.-]+)*(/|\.(py|md|sh|c|toml|yaml))")
_MODULE = re.compile(r"\bdistributed_grid(?:\.\w+)+")
_NOT_PATHS = {"ray/", "dev/shm/"}  # folders of the runtime folder and of the host, not ours


def documents():
    return [pytest.param(path, id=str(path.relative_to(ROOT))) for path in DOCUMENTS]


def _exists(token: str, folder: Path) -> bool:
    token = token.removeprefix("./")
    return any((base / token).exists() for base in (ROOT, PACKAGE, folder))


@pytest.mark.parametrize("document", documents())
def test_links_stay_in_the_repository_and_lead_somewhere(document: Path):
    wrong = []
    for target in _LINK.findall(document.read_text(encoding="utf-8")):
        if target.startswith(("http://", "https://", "mailto:", "#")):
            continue
        path = (document.parent / target.split("#")[0]).resolve()
        if not path.is_relative_to(ROOT) or not path.exists():
            wrong.append(target)
    assert not wrong, f"{document.name} links to what the repository does not have: {wrong}"


@pytest.mark.parametrize("document", documents())
def test_named_paths_exist(document: Path):
    wrong = []
    for code in _CODE.findall(document.read_text(encoding="utf-8")):
        for word in re.split(r"[\s,()]+", code):
            if (not _PATH.fullmatch(word) or "/" not in word.rstrip("/")
                    and not word.endswith("/") or word in _NOT_PATHS):
                continue
            if not _exists(word, document.parent):
                wrong.append(word)
    assert not wrong, f"{document.name} names paths the repository does not have: {wrong}"


def _defines(module: Path, name: str) -> bool:
    """Whether the module's source defines or imports ``name`` at its top level."""
    tree = ast.parse(module.read_text(encoding="utf-8"))
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            if node.name == name:
                return True
        elif isinstance(node, (ast.Assign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            if any(isinstance(t, ast.Name) and t.id == name for t in targets):
                return True
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            if any((a.asname or a.name.split(".")[0]) == name or a.name == "*"
                   for a in node.names):
                return True
    return False


def _resolves(dotted: str) -> bool:
    if re.search(rf'Extension\(\s*"{re.escape(dotted)}"', (ROOT / "setup.py").read_text()):
        return True  # a compiled module (setup.py builds it)
    parts = dotted.split(".")[1:]
    for cut in range(len(parts), -1, -1):
        base = PACKAGE.joinpath(*parts[:cut])
        module = base.with_suffix(".py") if cut else None
        if module is not None and module.is_file():
            break
        if (base / "__init__.py").is_file():
            module = base / "__init__.py"
            break
    else:
        return False
    rest = parts[cut:]
    # a name defined in the module; what follows it (a method, a field) is the class's business
    return not rest or _defines(module, rest[0])


@pytest.mark.parametrize("document", documents())
def test_named_modules_exist(document: Path):
    names = set(_MODULE.findall(document.read_text(encoding="utf-8")))
    wrong = sorted(name for name in names if not _resolves(name))
    assert not wrong, f"{document.name} names modules or names the package does not have: {wrong}"
