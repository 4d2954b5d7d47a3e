"""The project's import structure, read with `ast` only: DVC code deps, cycles, layering, the bento.

Nothing here imports pipelines/, models/ or serving/, so these checks still report when that code is
mid-refactor or broken. A module's imports are every ``import``/``from`` anywhere in its tree
(function-level ones included) plus, for what a process may load, dynamic imports named by string
constants that are exactly a module's dotted name ("models.mlp", "pipelines.modalities.text.plugin"), as
registries list their plug-ins. A "module:Class" string names a service that `bentoml serve` starts,
not something the naming process imports. The bento check follows module-level imports (what loading
the service runs) plus the function-level imports of the request side: serving/ and the modalities'
``serve`` modules; the training side's lazy imports (torch, the exporter) never run in the service.
"""

from __future__ import annotations

import ast
import functools
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("pipelines", "models", "serving")
BENTOFILE = ROOT / "serving" / "bentofile.yaml"


@dataclass
class Module:
    name: str  # dotted, e.g. "pipelines.collect"; a package is named by its directory
    path: Path
    is_package: bool
    static: set[str] = field(default_factory=set)  # project modules imported by import statements
    top: set[str] = field(default_factory=set)  # ... by module-level statements (not inside a def)
    dynamic: set[str] = field(default_factory=set)  # project modules named by string constants
    raw: set[str] = field(default_factory=set)  # every absolute name imported, project or not
    strings: set[str] = field(default_factory=set)  # every string constant (for names outside the project)
    syntax_error: str | None = None

    @property
    def rel(self) -> str:
        return self.path.relative_to(ROOT).as_posix()


def module_name(path: Path) -> tuple[str, bool]:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    is_package = parts[-1] == "__init__"
    return ".".join(parts[:-1] if is_package else parts), is_package


def parents(name: str) -> list[str]:
    """``a.b.c`` -> ``["a", "a.b"]``: the packages whose __init__ runs before ``a.b.c``."""
    parts = name.split(".")
    return [".".join(parts[:i]) for i in range(1, len(parts))]


def resolve(name: str, known: Iterable[str]) -> str | None:
    """The longest prefix of ``name`` that is a project module (``pkg.mod.attr`` -> ``pkg.mod``)."""
    parts = name.split(".")
    for i in range(len(parts), 0, -1):
        if (candidate := ".".join(parts[:i])) in known:
            return candidate
    return None


def absolute(module: Module, node: ast.ImportFrom) -> str:
    """The absolute module a ``from ... import`` reads from (relative levels resolved)."""
    if not node.level:
        return node.module or ""
    base = module.name.split(".") if module.is_package else module.name.split(".")[:-1]
    base = base[: len(base) - node.level + 1]  # each level past the first goes one package up
    return ".".join([*base, node.module] if node.module else base)


# "pkg.mod" only: "pkg.mod:Attr" names a service started by `bentoml serve`, and "models:/name@alias"
# (an MLflow URI) is not the models package
DYNAMIC = re.compile(r"([A-Za-z_][\w.]*)")


def dynamic_target(text: str) -> str | None:
    match = DYNAMIC.fullmatch(text)
    return match.group(1) if match else None


def analyse(module: Module, known: set[str]) -> None:
    try:
        tree = ast.parse(module.path.read_text(encoding="utf-8"), filename=str(module.path))
    except SyntaxError as exc:
        module.syntax_error = f"{module.rel}:{exc.lineno}: {exc.msg}"
        return
    inner = {id(n) for f in ast.walk(tree) if isinstance(f, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
             for n in ast.walk(f) if n is not f}
    # `if TYPE_CHECKING:` imports never run: annotations only
    typing_only = {id(n) for f in ast.walk(tree) if isinstance(f, ast.If) and "TYPE_CHECKING" in ast.unparse(f.test)
                   for stmt in f.body for n in ast.walk(stmt)}
    for node in ast.walk(tree):
        if id(node) in typing_only:
            continue
        before = set(module.static)
        if isinstance(node, ast.Import):
            for alias in node.names:
                module.raw.add(alias.name)
                if target := resolve(alias.name, known):
                    module.static.add(target)
        elif isinstance(node, ast.ImportFrom):
            source = absolute(module, node)
            module.raw.add(source)
            for alias in node.names:
                # `from pkg import name`: the submodule pkg.name if there is one, else pkg itself
                full = f"{source}.{alias.name}"
                module.raw.add(full)
                if full in known:
                    module.static.add(full)
                elif target := resolve(source, known):
                    module.static.add(target)
        elif isinstance(node, ast.Constant) and isinstance(node.value, str):
            module.strings.add(node.value)
            if (dotted := dynamic_target(node.value)) in known:
                module.dynamic.add(dotted)
        if id(node) not in inner:
            module.top |= module.static - before
    module.static.discard(module.name)
    module.top.discard(module.name)
    module.dynamic.discard(module.name)


@functools.cache
def project() -> dict[str, Module]:
    """Every .py under pipelines/, models/, serving/, by dotted name, with its imports."""
    modules: dict[str, Module] = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            if "__pycache__" in path.parts:
                continue
            name, is_package = module_name(path)
            modules[name] = Module(name, path, is_package)
    for module in modules.values():
        analyse(module, set(modules))
    return modules


def request_side(module: Module) -> bool:
    """Code the service runs: serving/ and the modalities' ``serve`` modules (all their imports count)."""
    return module.name.startswith("serving.") or module.name.endswith(".serve")


def reach(entries: Iterable[str], lazy: Callable[[Module], bool] = lambda m: True) -> dict[str, str | None]:
    """Modules a process starting at ``entries`` may load (imports, transitively, and parent packages),
    each mapped to the module that first pulled it in (None for an entry), for the failure messages.
    Function-level imports count only in modules for which ``lazy`` is true."""
    modules = project()
    via: dict[str, str | None] = {}
    todo = [(name, None) for entry in entries for name in (entry, *parents(entry)) if name in modules]
    while todo:  # breadth-first, so the chains reported are short ones
        name, source = todo.pop(0)
        if name in via:
            continue
        via[name] = source
        module = modules[name]
        for target in sorted((module.static if lazy(module) else module.top) | module.dynamic):
            todo.extend((n, name) for n in (target, *parents(target)) if n in modules and n not in via)
    return via


def chain(name: str, via: dict[str, str | None]) -> str:
    """``a <- b <- entry``: how ``name`` gets imported."""
    links = [name]
    while (source := via[links[-1]]) is not None:
        links.append(source)
    return " <- ".join(links)


def dvc_stages() -> dict[str, dict]:
    return yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]


def entry_module(stage: dict) -> str:
    match = re.match(r"\s*python\s+-m\s+([\w.]+)", stage["cmd"])
    assert match, f"cmd is not `python -m MODULE ...`: {stage['cmd']!r}"
    return match.group(1)


def covered(rel: str, deps: Iterable[str]) -> bool:
    """A file dep equal to ``rel``, or a directory dep above it."""
    return any(rel == dep or rel.startswith(dep.rstrip("/") + "/") for dep in deps)


def test_project_modules_parse() -> None:
    """A module that does not parse has unknown imports: every other check here would miss them."""
    errors = [m.syntax_error for m in project().values() if m.syntax_error]
    assert not errors, "modules that do not parse:\n  " + "\n  ".join(errors)


@pytest.mark.parametrize("stage", list(dvc_stages()))
def test_stage_deps_cover_imported_code(stage: str) -> None:
    """DVC reruns a stage only when a dep changes: every file its process may import must be a dep."""
    spec = dvc_stages()[stage]
    entry = entry_module(spec)
    assert entry in project(), f"{stage}: entry module {entry} is not a file under {', '.join(PACKAGES)}"
    deps = spec.get("deps", [])
    via = reach([entry])
    missing = sorted(f"{project()[m].rel}  ({chain(m, via)})" for m in via if not covered(project()[m].rel, deps))
    assert not missing, f"stage {stage!r} imports files not in its dvc.yaml deps:\n  " + "\n  ".join(missing)


@pytest.mark.parametrize("stage", list(dvc_stages()))
def test_stage_code_deps_exist(stage: str) -> None:
    """A dep naming a moved or deleted code file makes `dvc repro` fail with a missing dependency."""
    deps = dvc_stages()[stage].get("deps", [])
    gone = [d for d in deps if d.split("/")[0] in PACKAGES and not (ROOT / d).exists()]
    assert not gone, f"stage {stage!r} lists code deps that do not exist: {gone}"


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as ``[a, b, ..., a]`` (Tarjan's SCCs, then a path inside the first big one)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    sccs: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            scc = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                scc.append(w)
                if w == v:
                    break
            sccs.append(scc)

    for v in sorted(graph):
        if v not in index:
            visit(v)
    scc = next((set(s) for s in sccs if len(s) > 1), None)
    if scc is None:
        return None
    start = min(scc)
    paths = {start: [start]}
    frontier = [start]
    while frontier:  # BFS inside the SCC back to start: the shortest cycle through it
        nxt = []
        for v in frontier:
            for w in sorted(graph[v] & scc):
                if w == start:
                    return [*paths[v], start]
                if w not in paths:
                    paths[w] = [*paths[v], w]
                    nxt.append(w)
        frontier = nxt
    raise AssertionError("unreachable: an SCC always has a cycle")


def test_no_import_cycles() -> None:
    """Static imports only; a submodule importing its own package's __init__ is not an edge."""
    modules = project()
    graph = {
        name: {t for t in m.static if not name.startswith(t + ".")} for name, m in modules.items()
    }
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def step_modules() -> set[str]:
    return {entry_module(s) for s in dvc_stages().values()} | {"pipelines.flow"}


def test_serving_never_imports_a_pipeline_step() -> None:
    """The service ships in a bento without the steps (and their torch/lightning/mlflow imports)."""
    steps = step_modules()
    bad = sorted(
        f"{m.rel} imports {t}"
        for m in project().values() if m.name.split(".")[0] == "serving"
        for t in sorted((m.static | m.dynamic) & steps)
    )
    assert not bad, "serving/ imports pipeline step modules:\n  " + "\n  ".join(bad)


def test_project_never_imports_tests() -> None:
    """tests/ is neither packaged nor in the bento: project code importing it breaks outside a checkout."""
    # strings too ("tests.helpers:serving"), but not a bare "tests", which is as likely a directory name
    test_modules = {f"tests.{p.stem}" for p in (ROOT / "tests").glob("*.py")}
    bad = sorted(
        f"{m.rel}: {name}"
        for m in project().values()
        for name in m.raw | {dynamic_target(s) for s in m.strings} & test_modules
        if name == "tests" or name.startswith("tests.")
    )
    assert not bad, "project modules import tests/:\n  " + "\n  ".join(bad)


def glob_regex(pattern: str) -> re.Pattern[str]:
    """A root-relative glob as a regex: ``**`` any depth (zero or more directories), ``*``/``?`` in one name."""
    out, i = "", 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out, i = out + "(?:.*/)?", i + 3
        elif pattern.startswith("**", i):
            out, i = out + ".*", i + 2
        elif pattern[i] == "*":
            out, i = out + "[^/]*", i + 1
        elif pattern[i] == "?":
            out, i = out + "[^/]", i + 1
        else:
            out, i = out + re.escape(pattern[i]), i + 1
    return re.compile(out + r"\Z")


def glob_matches(rel: str, pattern: str) -> bool:
    """The file itself or one of its directories matches (a directory pattern takes what is under it)."""
    regex = glob_regex(pattern.strip().lstrip("/").rstrip("/"))
    parts = rel.split("/")
    return any(regex.match("/".join(parts[:i])) for i in range(1, len(parts) + 1))


def service_modules(bentofile: dict) -> list[str]:
    """The bentofile's ``service:`` and every serving/*.py defining a ``@bentoml.service`` class."""
    names = []
    if isinstance(bentofile.get("service"), str):
        names.append(bentofile["service"].split(":", 1)[0])
    for path in sorted((ROOT / "serving").glob("*.py")):
        if "@bentoml.service" in path.read_text(encoding="utf-8"):
            names.append(module_name(path)[0])
    return sorted(set(names))


def test_bento_includes_cover_service_imports() -> None:
    """`bentoml build` copies only the includes: a service importing anything else fails in the container."""
    try:
        bentofile = yaml.safe_load(BENTOFILE.read_text())
    except (OSError, yaml.YAMLError) as exc:
        pytest.skip(f"cannot read {BENTOFILE.relative_to(ROOT)}: {exc}")
    include, exclude = bentofile.get("include"), bentofile.get("exclude") or []
    if not isinstance(include, list) or not include:
        pytest.skip("serving/bentofile.yaml has no include list (bentoml would take the whole build context)")
    services = service_modules(bentofile)
    unknown = [s for s in services if s not in project()]
    if not services or unknown:
        pytest.skip(f"service modules not found under serving/: {unknown or 'none named'}")
    missing: dict[str, str] = {}  # file -> the first import chain found for it
    for service in services:
        via = reach([service], lazy=request_side)
        for name in via:
            rel = project()[name].rel
            if not any(glob_matches(rel, p) for p in include) or any(glob_matches(rel, p) for p in exclude):
                missing.setdefault(rel, chain(name, via))
    assert not missing, "serving/bentofile.yaml include: misses files the services import:\n  " + "\n  ".join(
        f"{rel}  ({how})" for rel, how in sorted(missing.items()))


def test_checker_helpers() -> None:
    """The cycle finder and the glob matcher the checks above rely on."""
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None
    assert glob_matches("serving/x/y.py", "serving/**/*.py") and glob_matches("serving/y.py", "serving/**/*.py")
    assert glob_matches("serving/x/y.py", "serving") and glob_matches("a/__pycache__/m.pyc", "**/__pycache__")
    assert not glob_matches("serving/x/y.py", "serving/*.py") and not glob_matches("servings/y.py", "serving")
    assert dynamic_target("serving.text:TextClassifier") is None
    assert dynamic_target("models:/dlops@champion") is None
