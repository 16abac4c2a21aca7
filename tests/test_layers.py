"""The import direction stays one-way: shared layers below the stages, no stage importing a stage above or beside it,
and no module importing one that imports it back (docs/architecture.md)."""
from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("stores", "plugins", "extract", "rag", "train")

# one prefix per top-level package: a module's layer is its folder
LAYERS = [
    ("stores.", 0),                                   # spec, paths, provenance, the store, the registry class
    ("plugins.", 1),                                  # shared plugins: models (registry, sources, encoders) and data
    ("extract.", 2), ("rag.", 2),                     # the two offline stages, side by side
    ("train.", 3),                                    # training sits on top
]
STAGE_API = {"extract.pipeline"}                      # what a layer above may call of the extract stage (the demo)
SIDE_BY_SIDE = {("extract.", "rag."), ("rag.", "extract.")}   # same layer, but neither may import the other's stage


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def layer(mod: str) -> int:
    return next(n for prefix, n in LAYERS if (mod + ".").startswith(prefix) or mod.startswith(prefix))


def _type_checking_lines(tree: ast.AST) -> set[int]:
    lines = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            for sub in ast.walk(node):
                if hasattr(sub, "lineno"):
                    lines.add(sub.lineno)
    return lines


def project_imports(path: Path) -> set[str]:
    """Every project module this file imports, at any depth (function-level imports too; TYPE_CHECKING excluded)."""
    me = module_name(path)
    package = me if path.name == "__init__.py" else me.rsplit(".", 1)[0]
    tree = ast.parse(path.read_text())
    skip = _type_checking_lines(tree)
    out = set()
    for node in ast.walk(tree):
        if getattr(node, "lineno", None) in skip:
            continue
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            names = [mod] + [f"{mod}.{a.name}" for a in node.names]
        else:
            continue
        for n in names:
            if n.split(".")[0] in PACKAGES:
                out.add(n)
    return out


def graph() -> dict[str, set[str]]:
    files = {module_name(p): p for pkg in PACKAGES for p in (ROOT / pkg).rglob("*.py")}
    g = {}
    for mod, path in files.items():
        deps = set()
        for name in project_imports(path):
            while name and name not in files:           # `from x.y import z`: z is a name, x.y the module
                name = name.rsplit(".", 1)[0] if "." in name else ""
            if name and name != mod and name not in PACKAGES:    # a bare package (empty __init__) is no edge
                deps.add(name)
        g[mod] = deps
    return g


def test_no_module_imports_a_layer_above_or_a_sibling_stage():
    bad = []
    for mod, deps in graph().items():
        for dep in deps:
            if layer(dep) > layer(mod):
                bad.append(f"{mod} (layer {layer(mod)}) imports {dep} (layer {layer(dep)})")
            elif layer(dep) == layer(mod) == 2 and any(mod.startswith(a) and dep.startswith(b) for a, b in SIDE_BY_SIDE):
                bad.append(f"stage {mod} imports the other stage's {dep}")
    assert not bad, "\n".join(sorted(bad))


def test_no_import_cycles():
    g = graph()
    cycles = []
    for start in g:                                      # every module: can it reach itself?
        stack, seen = [(start, [start])], set()
        while stack:
            node, trail = stack.pop()
            for dep in g.get(node, ()):
                if dep == start:
                    cycles.append(" -> ".join(trail + [start]))
                elif dep not in seen:
                    seen.add(dep)
                    stack.append((dep, trail + [dep]))
    assert not cycles, "\n".join(sorted(set(cycles))[:20])


def test_the_check_sees_imports():
    """Guard against a check that cannot fail: known edges are found."""
    g = graph()
    assert "stores.spec" in g["extract.run.plan"]
    assert "plugins.registry" in g["rag.service"]


def torch_imports(path: Path) -> list[str]:
    """The torch modules a file imports, at any depth (function-level imports too)."""
    out = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and not node.level:
            out.append(node.module or "")
    return [n for n in out if n.split(".")[0] == "torch"]


def test_the_shared_layer_does_not_import_torch():
    """stores/ is read by every stage (and by tools that never train): it holds numpy arrays, never torch tensors;
    train/data.py is where arrays become tensors."""
    heavy = {module_name(p): torch_imports(p) for p in (ROOT / "stores").rglob("*.py") if torch_imports(p)}
    assert not heavy, heavy
    assert torch_imports(ROOT / "train" / "data.py")          # guard: the check sees a torch import where one is
