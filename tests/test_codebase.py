"""The shape of the code: no import cycle, ``search`` reaches ``layers`` through its top level only,
the command line parses its arguments without importing anything heavy, and every file the code,
tests and documents cite exists."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("layers", "search")
#: The repository's own folders: a path that starts with one of them is a citation of a file here.
CITED_FOLDERS = ("benchmarks", "docs", "layers", "search", "spaces", "tests")
#: ``folder/.../name.ext``, not inside a longer path (``results/search/...`` is no citation).
CITED_PATH = re.compile(
    r"(?<![\w./-])(?:" + "|".join(CITED_FOLDERS) + r")/[\w./-]*\.(?:py|md|yaml|yml|json|png|toml|txt|csv|html)\b"
)
#: A bare module file name in double backquotes, as docstrings write it: a module beside the citing one.
CITED_SIBLING = re.compile(r"``(\w+\.py)``")


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def project_imports(path: Path, modules: set[str]) -> set[str]:
    """Project modules ``path`` imports, wherever the import statement sits (functions included).

    ``from package import name`` imports the module ``package.name`` when there is one, and the
    package itself otherwise."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join([*anchor, base] if base else anchor)
            submodules = {f"{base}.{alias.name}" for alias in node.names} & modules
            found.update(submodules or {base})
    return {m for m in found if m in modules}


def project_modules() -> dict[str, Path]:
    return {module_name(p): p for package in PACKAGES for p in (ROOT / package).rglob("*.py")}


def import_graph() -> dict[str, set[str]]:
    modules = project_modules()
    return {name: project_imports(path, set(modules)) - {name} for name, path in modules.items()}


def test_no_import_cycle():
    graph = import_graph()
    state: dict[str, str] = {}
    stack: list[str] = []

    def visit(module: str) -> None:
        state[module] = "open"
        stack.append(module)
        for target in sorted(graph[module]):
            if state.get(target) == "open":
                cycle = [*stack[stack.index(target) :], target]
                raise AssertionError("import cycle: " + " -> ".join(cycle))
            if target not in state:
                visit(target)
        stack.pop()
        state[module] = "done"

    for module in sorted(graph):
        if module not in state:
            visit(module)


def test_search_uses_layers_through_its_top_level_only():
    deep = set()
    for path in (ROOT / "search").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("layers."):
                deep.add(f"{module_name(path)}: from {node.module} import ...")
            elif isinstance(node, ast.Import):
                deep.update(f"{module_name(path)}: import {a.name}" for a in node.names if a.name.startswith("layers."))
    assert deep == set()


def test_help_imports_nothing_heavy():
    probe = (
        "import sys, contextlib, io\n"
        "from search.cli import build_parser\n"
        "with contextlib.redirect_stdout(io.StringIO()), contextlib.suppress(SystemExit):\n"
        "    build_parser().parse_args(['--help'])\n"
        "print(sorted(m for m in ('torch', 'optuna', 'sqlalchemy', 'pandas', 'ray') if m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def citing_files() -> list[Path]:
    """The top-level documents and every .py and .md file in the repository's own folders (what runs
    write under results/ is not the repository's)."""
    inside = [path for folder in CITED_FOLDERS for path in (ROOT / folder).rglob("*") if path.suffix in (".py", ".md")]
    return [*ROOT.glob("*.md"), *inside]


def cited_files() -> dict[str, set[str]]:
    """Each file path cited anywhere, and the files that cite it."""
    cited: dict[str, set[str]] = {}
    for source in citing_files():
        text, where = source.read_text(), str(source.relative_to(ROOT))
        paths = CITED_PATH.findall(text)
        if source.suffix == ".py":
            paths += [str(source.parent.relative_to(ROOT) / name) for name in CITED_SIBLING.findall(text)]
        for path in paths:
            cited.setdefault(path, set()).add(where)
    return cited


def test_every_cited_file_exists():
    cited = cited_files()
    assert "docs/design.md" in cited  # the pattern finds what the code cites
    missing = {path: sorted(by) for path, by in cited.items() if not (ROOT / path).is_file()}
    assert missing == {}


def test_ci_runs_exactly_the_readme_test_command():
    readme = (ROOT / "README.md").read_text()
    block = readme.split("Install and run the tests", 1)[1].split("```bash\n", 1)[1].split("\n```", 1)[0]
    ci = (ROOT / ".ci" / "run").read_text().strip().splitlines()[-1]
    assert ci == block.strip()
    assert "ruff format --check . && ruff check . && python -m pytest" in ci  # lint first, then the tests
