"""Every source path and llmft module named in the code's comments and strings, in the scripts and
in the README and docs/ exists: a file moved or renamed leaves no pointer to where it used to be."""
from __future__ import annotations

import ast
import importlib.util
import io
import re
import tokenize
from functools import cache
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
PACKAGE = REPO / "llmft"
# a file name or relative path ending in .py (lower case: NAME.py is a placeholder in the docs)
PATH = re.compile(r"(?<![\w./-])((?:[a-z0-9_]+/)*[a-z0-9_]+\.py)\b")
# llmft.a.b: a module, a package, or a module's top-level name (not .llmft.lock and the like)
MODULE = re.compile(r"(?<![\w./-])llmft(?:\.[a-z_][a-z0-9_]*)+")
FILE_SUFFIXES = {"json", "jsonl", "lock", "yaml", "yml", "md", "txt", "py", "toml", "log", "png", "bin", "pt"}


def mentions(path: Path) -> list[tuple[int, str]]:
    """(line, text) of each comment and string literal in a Python file; each line of a Markdown file."""
    text = path.read_text(encoding="utf-8")
    if path.suffix != ".py":
        return list(enumerate(text.splitlines(), 1))
    return [(tok.start[0], tok.string) for tok in tokenize.generate_tokens(io.StringIO(text).readline)
            if tok.type in (tokenize.COMMENT, tokenize.STRING)]


@cache
def basenames() -> frozenset:
    return frozenset(p.name for folder in ("llmft", "scripts", "tests") for p in (REPO / folder).rglob("*.py"))


@cache
def top_level_names(module: Path) -> frozenset:
    names = set()
    for node in ast.parse(module.read_text(encoding="utf-8")).body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, (ast.Assign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            names.update(t.id for t in targets if isinstance(t, ast.Name))
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            names.update((a.asname or a.name).split(".")[0] for a in node.names)
    return frozenset(names)


def path_exists(name: str, source: Path) -> bool:
    """Relative to the repository, llmft/, the mentioning file's folder; a bare file name anywhere in
    the project; a path that starts with an installed package's name (wandb/sdk/...) under it."""
    if any((base / name).is_file() for base in (REPO, PACKAGE, source.parent)):
        return True
    if "/" not in name:
        return name in basenames()
    top = name.split("/")[0]
    if top in ("llmft", "tests", "scripts"):
        return False
    spec = importlib.util.find_spec(top)
    return bool(spec and spec.submodule_search_locations
                and any((Path(loc).parent / name).is_file() for loc in spec.submodule_search_locations))


def module_exists(dotted: str) -> bool:
    """The longest prefix that is a module or package; at most one name after it, defined there."""
    parts = dotted.split(".")
    for n in range(len(parts), 0, -1):
        base = REPO.joinpath(*parts[:n])
        module = base.with_suffix(".py") if base.with_suffix(".py").is_file() else base / "__init__.py"
        if module.is_file():
            rest = parts[n:]
            return not rest or (len(rest) == 1 and rest[0] in top_level_names(module))
    return False


def stale_in(path: Path) -> list[tuple[int, str]]:
    """(line, name) of each path or module ``path`` mentions that does not exist."""
    found = []
    for line, text in mentions(path):
        for match in [*PATH.finditer(text), *MODULE.finditer(text)]:
            name = match.group(0)
            if match.re is PATH:
                ok = path_exists(name, path)
            else:
                ok = name.rsplit(".", 1)[-1] in FILE_SUFFIXES or module_exists(name)
            if not ok:
                found.append((line + text.count("\n", 0, match.start()), name))
    return sorted(found, key=lambda f: f[0])


def stale(files) -> list[str]:
    return [f"{path.relative_to(REPO)}:{line}: {name}" for path in files for line, name in stale_in(path)]


def test_code_names_only_files_and_modules_that_exist():
    files = sorted(PACKAGE.rglob("*.py")) + sorted((REPO / "scripts").glob("*.py"))
    assert stale(files) == []


def test_readme_and_docs_name_only_files_and_modules_that_exist():
    files = [REPO / "README.md", *sorted((REPO / "docs").rglob("*.md"))]
    assert stale(f for f in files if f.is_file()) == []


def test_a_moved_file_is_caught(tmp_path):
    source = tmp_path / "old.py"
    source.write_text('"""See llmft/crf.py and llmft.precision.load_int8."""\n'
                      "# models.py; llmft/models/crf.py, llmft.models.precision.load_int8, run_dir.py, .llmft.lock\n")
    assert [name for _, name in stale_in(source)] == ["llmft/crf.py", "llmft.precision.load_int8", "models.py"]
