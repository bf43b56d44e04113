"""The house rules of docs/architecture.md, measured from the imports (every import, lazy ones too):
pipeline/'s packages stand on floors and import only downwards, no module takes part in an import
cycle, no package reaches into another one's private names, and models/ knows nothing of pipeline/."""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
# a package imports only packages on a lower floor (its own modules excepted)
FLOORS = {"settings": 0, "errors": 0, "face": 0, "codec": 1, "storage": 1, "manifest": 2, "runtime": 2, "archive": 3,
          "jobs": 4, "serving": 4}


def _modules(top: str) -> dict[str, Path]:
    found = {}
    for path in (ROOT / top).rglob("*.py"):
        name = ".".join(path.relative_to(ROOT).with_suffix("").parts)
        found[name.removesuffix(".__init__")] = path
    return found


def _imports(path: Path) -> list[tuple[str, list[str]]]:
    """(module, imported names) of every import statement, at any depth; relative ones resolved."""
    out = []
    package = ".".join(path.relative_to(ROOT).with_suffix("").parts[:-1])
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out += [(a.name, []) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            module = node.module or ""
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                module = ".".join(base + ([module] if module else []))
            out.append((module, [a.name for a in node.names]))
    return out


def _edges() -> dict[str, set[str]]:
    mods = _modules("pipeline")
    edges = defaultdict(set)
    for name, path in mods.items():
        for module, names in _imports(path):
            targets = [f"{module}.{n}" for n in names if f"{module}.{n}" in mods] or [module]
            edges[name] |= {t for t in targets if t in mods and t not in (name, "pipeline")}
    return edges


def _package(module: str) -> str:
    return module.split(".")[1]


def test_packages_import_only_downwards():
    assert set(FLOORS) >= {_package(m) for m in _modules("pipeline") if m != "pipeline"}, "a new package needs a floor"
    upward = sorted(f"{a} -> {b}" for a, bs in _edges().items() for b in bs
                    if _package(a) != _package(b) and FLOORS[_package(b)] >= FLOORS[_package(a)])
    assert not upward


def test_no_import_cycles():
    edges = _edges()
    state: dict[str, int] = {}
    cycles = []

    def visit(node: str, stack: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(edges.get(node, ())):
            if state.get(nxt) == 1:
                cycles.append(stack[stack.index(nxt):] + [nxt])
            elif nxt not in state:
                visit(nxt, stack + [nxt])
        state[node] = 2

    for module in sorted(edges):
        if module not in state:
            visit(module, [module])
    assert not cycles


def test_no_package_imports_another_packages_private_names():
    private = []
    for name, path in _modules("pipeline").items():
        for module, names in _imports(path):
            if module.startswith("pipeline.") and module.split(".")[1] != name.split(".")[1]:
                private += [f"{name}: {module}.{n}" for n in names if n.startswith("_")]
    assert not private


def test_models_and_pipeline_stay_below_their_callers():
    offenders = []
    for top, forbidden in (("models", ("pipeline", "flows")), ("pipeline", ("flows",))):
        for name, path in _modules(top).items():
            offenders += [f"{name} -> {m}" for m, _ in _imports(path) if m.split(".")[0] in forbidden]
    assert not offenders


def test_the_rules_catch_an_upward_import(tmp_path, monkeypatch):
    """The checks above would fail on a real back edge: an import from codec up into jobs."""
    path = ROOT / "pipeline" / "codec" / "image.py"
    text = path.read_text()
    patched = tmp_path / "image.py"
    patched.write_text(text + "\nfrom pipeline.jobs.params import CompressArchiveParams\n")
    real = Path.read_text
    monkeypatch.setattr(Path, "read_text", lambda self, *a, **k: real(patched if self == path else self, *a, **k))
    edges = _edges()
    assert "pipeline.jobs.params" in edges["pipeline.codec.image"]
    upward = [b for b in edges["pipeline.codec.image"] if FLOORS[_package(b)] >= FLOORS["codec"] and _package(b) != "codec"]
    assert upward == ["pipeline.jobs.params"]


def test_other_packages_use_only_a_package_s_face():
    """pipeline/ and flows/ reach another package through its face (`from pipeline.storage import
    filesystem`, names in its `__all__`), never into its modules; the face itself imports lazily."""
    import importlib

    reaching, unknown = [], []
    for top in ("pipeline", "flows"):
        for name, path in _modules(top).items():
            mine = name.split(".")[1] if top == "pipeline" and name.count(".") >= 1 else None
            for module, names in _imports(path):
                parts = module.split(".")
                if parts[0] != "pipeline" or len(parts) < 2 or parts[1] not in FLOORS or parts[1] == mine:
                    continue
                if len(parts) > 2:
                    reaching.append(f"{name}: {module}")
                elif names and parts[1] not in ("settings", "errors", "face"):
                    face = set(importlib.import_module(module).__all__)
                    unknown += [f"{name}: {module}.{n}" for n in names if n not in face]
    assert not reaching
    assert not unknown


def test_every_face_name_resolves():
    import importlib

    for package in FLOORS:
        module = importlib.import_module(f"pipeline.{package}")
        for name in getattr(module, "__all__", ()):
            assert getattr(module, name) is not None, f"pipeline.{package}.{name}"


def test_the_module_map_names_every_module():
    """docs/architecture.md's module map has a line for every module of flows/, pipeline/ and models/."""
    doc = (ROOT / "docs" / "architecture.md").read_text()
    missing = [str(path.relative_to(ROOT)) for top in ("flows", "pipeline", "models") for path in (ROOT / top).rglob("*.py")
               if path.name != "__init__.py" and f"`{path.relative_to(ROOT).as_posix()}`" not in doc]
    assert not missing


def test_no_face_name_is_shadowed_by_a_module():
    """A face name that is also a module's name would be replaced by the module once it is imported."""
    import importlib

    shadowed = []
    for package in FLOORS:
        module = importlib.import_module(f"pipeline.{package}")
        exports = getattr(module, "_EXPORTS", {})
        shadowed += [f"pipeline.{package}.{n}" for n, m in exports.items()
                     if n != m and (ROOT / "pipeline" / package / f"{n}.py").exists()]
    assert not shadowed
