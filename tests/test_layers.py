"""The layers as the house style draws them, checked over the import graph: `models` and
`storage` never import `app`; `app` never imports torch (models decides, app serves); and
no two files import each other, directly or round a longer loop."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("app", "models", "storage")


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path, on_import: bool = False) -> set[str]:
    """Modules `path` imports when it runs (imports under `if TYPE_CHECKING:` are for the
    type checker only and left out); `on_import`: only those that importing it runs (not
    the ones inside functions)."""
    tree = ast.parse(path.read_text())
    skip: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            skip |= {id(n) for child in node.body for n in ast.walk(child)}
        if on_import and isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            skip |= {id(n) for child in node.body for n in ast.walk(child)}
    out = set()
    pkg = module_name(path).rsplit(".", 1)[0] if path.name != "__init__.py" else module_name(path)
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(pkg.split(".")[: len(pkg.split(".")) - node.level + 1]
                                + ([base] if base else []))
            out.add(base)
            out |= {f"{base}.{a.name}" for a in node.names}
    return out


def graph() -> dict[str, set[str]]:
    files = {module_name(p): p for pkg in PACKAGES for p in (ROOT / pkg).rglob("*.py")
             if "migrations" not in p.parts}
    return {m: {i for i in imports(p) if i in files and i != m} for m, p in files.items()}


def test_models_and_storage_never_import_app() -> None:
    for m, deps in graph().items():
        if m.split(".")[0] in ("models", "storage"):
            assert not [d for d in deps if d.split(".")[0] == "app"], m


def test_app_never_imports_torch() -> None:
    for p in (ROOT / "app").rglob("*.py"):
        assert not [i for i in imports(p) if i.split(".")[0] == "torch"], p


def test_importing_the_app_reaches_no_torch_through_any_module() -> None:
    """Transitively: whatever `app` imports on import, and whatever those import, never
    imports torch; torch stays behind functions that export, train and evaluate."""
    files = {module_name(p): p for pkg in PACKAGES for p in (ROOT / pkg).rglob("*.py")
             if "migrations" not in p.parts}

    def parents(m: str) -> list[str]:  # importing a.b.c runs a/__init__ and a/b/__init__
        parts = m.split(".")
        return [".".join(parts[:i]) for i in range(1, len(parts))]

    seen: dict[str, list[str]] = {m: [m] for m in files if m.split(".")[0] == "app"}
    todo = list(seen)
    while todo:
        m = todo.pop()
        for dep in sorted(imports(files[m], on_import=True)):
            assert dep.split(".")[0] != "torch", " -> ".join([*seen[m], dep])
            for d in [*parents(dep), dep]:
                if d in files and d not in seen:
                    seen[d] = [*seen[m], d]
                    todo.append(d)
    assert "models.embedder" in seen and "models.inference" in seen  # the walk went deep


def test_no_import_cycles() -> None:
    g = graph()
    state: dict[str, int] = {}
    cycles: list[list[str]] = []

    def visit(m: str, path: list[str]) -> None:
        state[m] = 1
        for d in sorted(g[m]):
            if state.get(d) == 1:
                cycles.append(path[path.index(d):] + [d] if d in path else [m, d])
            elif d not in state:
                visit(d, [*path, d])
        state[m] = 2

    for m in sorted(g):
        if m not in state:
            visit(m, [m])
    # a package's __init__ re-exporting its modules is not a loop between files
    real = [c for c in cycles if not any(a.startswith(b + ".") or b.startswith(a + ".")
                                         for a, b in zip(c, c[1:], strict=False))]
    assert not real, real


def test_routes_and_services_never_assert_the_state_into_being() -> None:
    """The runtime's built state is typed (a 503 when asked for before start-up built it),
    so no handler or service has to assert that a collaborator exists."""
    offenders = [f"{p.relative_to(ROOT)}:{n}" for p in (ROOT / "app").rglob("*.py")
                 for n, line in enumerate(p.read_text().splitlines(), 1)
                 if line.strip().startswith("assert ") and "is not None" in line]
    assert not offenders, offenders
