"""The import layers of docs/design.md, read from every module's imports (ast), never by importing:
`scene3d` imports none of avfm, viewer, lab; `avfm` none of viewer, lab; `viewer` not lab; the three
distillers (`scene3d/distill/{volume,score,splat}`) do not import each other; nothing in `scene3d` or
`avfm` imports viser; and no two modules import each other, directly or through others."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("scene3d", "avfm", "viewer", "lab")
FORBIDDEN = {"scene3d": {"avfm", "viewer", "lab"}, "avfm": {"viewer", "lab"}, "viewer": {"lab"}, "lab": set()}
DISTILLERS = ("volume", "score", "splat")


def module_name(path: Path, root: Path) -> str:
    parts = path.relative_to(root).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_modules(path: Path, name: str) -> set[str]:
    """Every module `path` imports, absolute names (relative imports resolved); `from a import b`
    counts as importing `a` and, when it is a module, `a.b`."""
    found: set[str] = set()
    package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package[: len(package) - node.level + 1] + ([node.module] if node.module else []))
            found.add(base)
            found |= {f"{base}.{alias.name}" for alias in node.names}
    return found


def import_graph(root: Path) -> dict[str, set[str]]:
    """Module -> the names it imports from the project's packages (package `__init__` re-exports included)."""
    files = {module_name(p, root): p for pkg in PACKAGES if (root / pkg).is_dir() for p in (root / pkg).rglob("*.py")}
    return {name: {m for m in imported_modules(path, name) if m.split(".")[0] in PACKAGES and m != name}
            for name, path in files.items()}


def layer_violations(graph: dict[str, set[str]]) -> list[str]:
    bad = []
    for module, imports in sorted(graph.items()):
        top, parts = module.split(".")[0], module.split(".")
        for imported in sorted(imports):
            if imported.split(".")[0] in FORBIDDEN[top]:
                bad.append(f"{module} imports {imported}")
            other = imported.split(".")
            if (parts[:2] == other[:2] == ["scene3d", "distill"] and len(parts) > 2 and len(other) > 2
                    and parts[2] in DISTILLERS and other[2] in DISTILLERS and parts[2] != other[2]):
                bad.append(f"{module} imports {imported} (distillers stay apart)")
    return bad


def import_circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected sets of more than one module (Tarjan), ignoring package `__init__` faces that
    only re-export their children (a package importing its own submodule is no circle)."""
    edges = {m: {i for i in imps if i in graph and not m.startswith(i + ".") and not i.startswith(m + ".")}
             for m, imps in graph.items()}
    index, low, stack, on_stack, circles = {}, {}, [], set(), []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in edges[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                circles.append(sorted(component))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return circles


def test_the_project_keeps_its_layers_and_has_no_import_circle():
    graph = import_graph(ROOT)
    assert {m.split(".")[0] for m in graph} == set(PACKAGES)
    assert layer_violations(graph) == []
    assert import_circles(graph) == []


def test_the_libraries_below_the_viewer_do_not_import_viser():
    for pkg in ("scene3d", "avfm"):
        for path in (ROOT / pkg).rglob("*.py"):
            name = module_name(path, ROOT)
            assert not any(m.split(".")[0] == "viser" for m in imported_modules(path, name)), name


@pytest.mark.parametrize(("module", "line", "expected"), [
    ("scene3d/fields/extra.py", "from avfm.model import CanViT", "scene3d.fields.extra imports avfm.model"),
    ("scene3d/render/extra.py", "import viewer.server", "scene3d.render.extra imports viewer.server"),
    ("avfm/extra.py", "from lab.demo import run_demo", "avfm.extra imports lab.demo"),
    ("viewer/extra.py", "from lab.timing import x", "viewer.extra imports lab"),
    ("scene3d/distill/score/extra.py", "from ..volume import distiller",
     "scene3d.distill.score.extra imports scene3d.distill.volume.distiller (distillers stay apart)"),
])
def test_a_forbidden_import_is_reported(tmp_path, module, line, expected):
    """The check itself: a copy of the tree with one forbidden import added fails it."""
    for pkg in PACKAGES:
        for path in (ROOT / pkg).rglob("*.py"):
            target = tmp_path / path.relative_to(ROOT)
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(path.read_text())
    (tmp_path / module).write_text(line + "\n")
    assert any(v.startswith(expected) for v in layer_violations(import_graph(tmp_path))), expected


def test_an_import_circle_is_reported(tmp_path):
    for pkg in PACKAGES:
        (tmp_path / pkg).mkdir()
        (tmp_path / pkg / "__init__.py").write_text("")
    (tmp_path / "viewer" / "a.py").write_text("from viewer import b\n")
    (tmp_path / "viewer" / "b.py").write_text("import viewer.c\n")
    (tmp_path / "viewer" / "c.py").write_text("from .a import thing\n")
    assert import_circles(import_graph(tmp_path)) == [["viewer.a", "viewer.b", "viewer.c"]]
