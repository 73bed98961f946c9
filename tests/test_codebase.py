"""The shape of the code: no import cycle, ``search`` reaches ``layers`` through its top level only,
the command line parses its arguments without importing anything heavy, drivers, trial bodies and
reports start without timm (whose models ``layers`` still registers), and every file the code,
tests and documents cite exists."""

from __future__ import annotations

import ast
import importlib
import importlib.util
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


def fresh_output(probe: str) -> str:
    """What a fresh interpreter running ``probe`` in the repository's root prints."""
    return subprocess.run(
        [sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout.strip()


def test_help_imports_nothing_heavy():
    probe = (
        "import sys, contextlib, io\n"
        "from search.cli import build_parser\n"
        "with contextlib.redirect_stdout(io.StringIO()), contextlib.suppress(SystemExit):\n"
        "    build_parser().parse_args(['--help'])\n"
        "print(sorted(m for m in ('torch', 'optuna', 'sqlalchemy', 'pandas', 'ray') if m in sys.modules))\n"
    )
    assert fresh_output(probe) == "[]"


def test_drivers_trial_bodies_and_reports_start_without_timm_torchvision_or_sklearn():
    """None of them uses timm or torchvision, and scikit-learn (optuna-dashboard's) only from the
    first note or importance plot on; together these imports cost about 3 s of every start."""
    probe = (
        "import sys\n"
        "import search.cli, search.driver, search.cluster, search.training.segment, tests.fakes\n"
        "import search.results.report, search.results.export\n"
        "print(sorted(m for m in ('timm', 'torchvision', 'sklearn') if m in sys.modules))\n"
    )
    assert fresh_output(probe) == "[]"


def test_importing_timm_first_registers_the_models_at_once():
    """The other order, layers first, is this test process's own: its timm tests use the hook."""
    probe = (
        "import timm, layers\nprint(sorted(timm.list_models('weightformer_*')), timm.is_model('dynamic_backbone'))\n"
    )
    assert fresh_output(probe) == "['weightformer_base', 'weightformer_small', 'weightformer_tiny'] True"


def test_the_registration_hook_runs_after_the_import_and_not_at_a_mere_lookup(tmp_path, monkeypatch):
    """Watched here on a module of the test's own: a lookup that imports nothing (``find_spec``, as
    optional-dependency checks do) leaves the hook for the import, which runs it once, afterwards."""
    from layers.timm_models import _AfterImport

    (tmp_path / "watched_module.py").write_text("LOADED = True\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    seen: list[bool] = []
    hook = _AfterImport("watched_module", lambda: seen.append(sys.modules["watched_module"].LOADED))
    monkeypatch.setattr(sys, "meta_path", [hook, *sys.meta_path])
    monkeypatch.delitem(sys.modules, "watched_module", raising=False)
    assert importlib.util.find_spec("watched_module") is not None
    assert seen == [] and hook in sys.meta_path
    importlib.import_module("watched_module")
    assert seen == [True] and hook not in sys.meta_path


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
