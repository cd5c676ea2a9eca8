"""The package's shape, checked from the source with the standard library (ast): dependencies flow one way
(cli -> commands -> pipeline -> stages -> students -> runtime -> core), each package is entered through its
face (its __init__), no import cycles, small modules."""

from __future__ import annotations

import ast
from pathlib import Path

PKG = Path(__file__).resolve().parents[1] / "kdcompress"
CORE = "core"
RUNTIME = "runtime"  # ORT sessions, latency harnesses, ONNX I/O: beneath the stages, above core
STUDENTS = "students"  # the zoo: a layer beneath the stages that build students (teacher, select)
STAGES = {"data", "teacher", "select", "losses", "train", "export", "validate", "report"}
COMPOSERS = {"pipeline", "commands", "cli", "__main__"}
# What each lower layer may import besides itself; a stage imports these layers and itself only.
BENEATH = {CORE: set(), RUNTIME: {CORE}, STUDENTS: {CORE, RUNTIME}}
ALLOWED: dict[tuple[str, str], str] = {}  # stage -> stage imports that are allowed, with the reason: none
# The composers in their strict order, top first: each imports only what is below it (and the layers above
# the stages may import any of them): cli -> commands -> pipeline. pipeline never imports commands or cli;
# commands never import cli.
COMPOSER_ORDER = ("__main__", "cli", "commands", "pipeline")
# Packages entered through their face only: a module outside P imports P's names from P's __init__
# (`from ..select import select`), never from a module of P (`from ..select.search import select`), so a
# package can move its insides without its users noticing. core is exempt: it is a bag of leaf modules
# (errors, config, runio, spec, ...) with no face of its own, imported by module. commands is exempt: cli
# looks its modules up by name (commands.COMMANDS) and reads the shared flag types from commands.flags.
FACED = STAGES | {RUNTIME, STUDENTS, "pipeline"}
# Imports that may skip a face, with the reason. Keep this list short.
FACE_EXCEPTIONS: dict[tuple[str, str], str] = {}
# Limits measure smells; they are not targets (split by responsibility, never squeeze lines to meet them).
MAX_LINES = 500  # DESIGN: "files you can read in one sitting (~400-500 lines, one job each)"
MAX_FUNCTION_LINES = 60  # DESIGN: "functions you can read at once (~60 lines)"
# Functions allowed over MAX_FUNCTION_LINES, each with the reason it is still one piece. Keep this list short.
LONG_FUNCTIONS: dict[str, str] = {}


def _module_name(path: Path, root: Path = PKG) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _imports(path: Path, root: Path = PKG) -> set[str]:
    """Every kdcompress module this file imports (at any depth: top level, in functions, under TYPE_CHECKING),
    as dotted names relative to the package."""
    mod = _module_name(path, root)
    package = mod.split(".") if path.name == "__init__.py" else mod.split(".")[:-1]
    if mod == "":
        package = []
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - (node.level - 1)] if node.level > 1 else package
                target = ".".join([*base, *([node.module] if node.module else [])])
            elif (node.module or "").startswith("kdcompress"):
                target = node.module[len("kdcompress"):].lstrip(".")
            else:
                continue
            for alias in node.names:  # `from . import files` imports a module
                sub = f"{target}.{alias.name}" if target else alias.name
                out.add(sub if (root / Path(*sub.split("."))).with_suffix(".py").exists()
                        or (root / Path(*sub.split("."))).is_dir() else target)
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("kdcompress."):
                    out.add(alias.name[len("kdcompress."):])
    out.discard(mod)
    return out


def _graph(root: Path = PKG) -> dict[str, set[str]]:
    return {_module_name(p, root): _imports(p, root) for p in root.rglob("*.py")}


def _top(mod: str) -> str:
    return mod.split(".")[0] if mod else ""


def test_layers_import_only_the_layers_beneath():
    """core imports only core; runtime only core; students only core and runtime."""
    bad = [f"{m} -> {d}" for m, deps in _graph().items() if _top(m) in BENEATH
           for d in deps if _top(d) not in (_top(m), "", *BENEATH[_top(m)])]
    assert not bad, f"a layer imports above itself: {bad}"


def test_a_stage_imports_core_and_itself_only():
    bad = []
    for m, deps in _graph().items():
        src = _top(m)
        if src not in STAGES:
            continue
        for d in deps:
            dst = _top(d)
            if dst in (src, CORE, RUNTIME, STUDENTS, ""):
                continue
            if (src, dst) not in ALLOWED:
                bad.append(f"{m} -> {d}")
    assert not bad, "stage -> stage imports (compose them in pipeline or commands/): " + ", ".join(bad)


def test_only_composers_import_composers():
    bad = [f"{m} -> {d}" for m, deps in _graph().items() for d in deps
           if _top(d) in COMPOSERS and _top(m) not in COMPOSERS]
    assert not bad, bad


def _upward(graph: dict[str, set[str]]) -> list[str]:
    """Imports from a composer to one above it in COMPOSER_ORDER (or to itself, for the top-level modules)."""
    rank = {c: i for i, c in enumerate(COMPOSER_ORDER)}
    return [f"{m} -> {d}" for m, deps in graph.items() for d in deps
            if _top(m) in rank and _top(d) in rank and rank[_top(d)] < rank[_top(m)]]


def test_composers_import_in_strict_order():
    """cli -> commands -> pipeline: the pipeline never imports commands or cli, commands never import cli."""
    bad = _upward(_graph())
    assert not bad, f"a composer imports one above it (cli -> commands -> pipeline): {bad}"


def _behind_faces(graph: dict[str, set[str]]) -> list[str]:
    """Imports of a module inside a faced package from outside that package (instead of its face)."""
    return [f"{m} -> {d}" for m, deps in graph.items() for d in deps
            if _top(d) in FACED and _top(d) != _top(m) and d != _top(d)
            and (_top(m), d) not in FACE_EXCEPTIONS]


def test_packages_are_entered_through_their_faces():
    bad = _behind_faces(_graph())
    assert not bad, ("imports past a package's face (import the name from the package, adding it to its "
                     f"__init__): {bad}")


def test_the_checker_sees_an_upward_import_and_one_past_a_face(tmp_path):
    """The order and face checks can fail: in a fake package, pipeline.job -> commands.x is upward, and
    commands.x -> select.search skips select's face while commands.y -> select uses it."""
    pkg = tmp_path / "kdcompress"
    for sub in ("commands", "pipeline", "select"):
        (pkg / sub).mkdir(parents=True)
        (pkg / sub / "__init__.py").write_text("")
    (pkg / "__init__.py").write_text("")
    (pkg / "select" / "search.py").write_text("def select():\n    pass\n")
    (pkg / "pipeline" / "job.py").write_text("from ..commands import x\n")
    (pkg / "commands" / "x.py").write_text("from ..select.search import select\n")
    (pkg / "commands" / "y.py").write_text("from ..select import select\n")
    g = _graph(pkg)
    assert _upward(g) == ["pipeline.job -> commands.x"]
    assert _behind_faces(g) == ["commands.x -> select.search"]


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    state: dict[str, int] = {}
    stack: list[str] = []
    cycles: list[list[str]] = []

    def visit(m: str) -> None:
        state[m] = 1
        stack.append(m)
        for d in sorted(graph.get(m, ())):
            if d not in graph:
                continue
            if state.get(d) == 1:
                cycles.append([*stack[stack.index(d):], d])
            elif d not in state:
                visit(d)
        stack.pop()
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m)
    return cycles


def test_no_import_cycles():
    cycles = _cycles(_graph())
    assert not cycles, "import cycles: " + "; ".join(" -> ".join(c) for c in cycles)


def test_the_checker_sees_a_cycle_and_a_wrong_way_import(tmp_path):
    """The checks can fail: in a fake package, core.a -> data.b -> core.a is both a cycle and a wrong way."""
    pkg = tmp_path / "kdcompress"
    for sub in ("core", "data"):
        (pkg / sub).mkdir(parents=True)
        (pkg / sub / "__init__.py").write_text("")
    (pkg / "__init__.py").write_text("")
    (pkg / "core" / "a.py").write_text("from ..data import b\n")
    (pkg / "data" / "b.py").write_text("def f():\n    from ..core import a\n")
    g = _graph(pkg)
    assert g["core.a"] == {"data.b"} and g["data.b"] == {"core.a"}
    assert _cycles(g) == [["core.a", "data.b", "core.a"]]


def test_modules_stay_small():
    big = {_module_name(p): n for p in PKG.rglob("*.py") if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert not big, f"modules over {MAX_LINES} lines (split them by job): {big}"


def _long_functions(root: Path = PKG, limit: int = MAX_FUNCTION_LINES) -> dict[str, int]:
    """module.function (module.Class.method) -> lines, for every def longer than `limit` (its docstring counted)."""
    out: dict[str, int] = {}
    for p in root.rglob("*.py"):
        tree = ast.parse(p.read_text())
        for parent in ast.walk(tree):
            for node in ast.iter_child_nodes(parent):
                if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                    n = node.end_lineno - node.lineno + 1
                    owner = f"{parent.name}." if isinstance(parent, ast.ClassDef) else ""
                    if n > limit:
                        out[f"{_module_name(p, root)}.{owner}{node.name}"] = n
    return out


def test_functions_stay_short():
    long = {f: n for f, n in _long_functions().items() if f not in LONG_FUNCTIONS}
    assert not long, (f"functions over {MAX_FUNCTION_LINES} lines (name their phases as functions, or add one to "
                      f"LONG_FUNCTIONS with the reason): {long}")
    stale = [f for f in LONG_FUNCTIONS if f not in _long_functions()]
    assert not stale, f"LONG_FUNCTIONS names functions that are short now (or gone): drop them: {stale}"


def test_the_function_check_sees_a_long_method(tmp_path):
    pkg = tmp_path / "kdcompress"
    pkg.mkdir()
    body = "\n".join(f"        x{i} = {i}" for i in range(70))
    (pkg / "m.py").write_text(f"class A:\n    def f(self):\n{body}\n\n\ndef g():\n    return 1\n")
    assert _long_functions(pkg) == {"m.A.f": 71}
