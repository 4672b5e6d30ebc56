"""The house's rules, read from the code: the layers of docs/design.md and what each may import.

Every module of ``geoseg/`` is parsed (imports inside functions included). The layers, from the
bottom: the base (errors, console, version), ``data/``, ``models/``, ``execution/``, the
capabilities (predict, train, evaluate, mosaic, vectorize, view), ``cli/``. A module imports only
from its own layer or below; a capability reaches another only through that package's own names
(``geoseg.mosaic``, never ``geoseg.mosaic.job``); Ray is imported only where docs/design.md says;
no import circles; no module over 500 lines; no stage takes the user's options.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PKG = ROOT / "geoseg"
LAYERS = {"geoseg.errors": 0, "geoseg.console": 0, "geoseg.version": 0, "geoseg.data": 1, "geoseg.models": 2,
          "geoseg.execution": 3, "geoseg.predict": 4, "geoseg.train": 4, "geoseg.evaluate": 4, "geoseg.mosaic": 4, "geoseg.composite": 4, "geoseg.rank": 4,
          "geoseg.vectorize": 4, "geoseg.view": 4, "geoseg.cli": 5, "geoseg.__main__": 5, "geoseg": 5}
FEATURES = ("predict", "train", "evaluate", "composite", "mosaic", "vectorize", "rank", "view")
MAX_LINES = 500


def modules() -> dict[str, Path]:
    out = {}
    for path in PKG.rglob("*.py"):
        parts = path.relative_to(ROOT).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        out[name] = path
    return out


MODULES = modules()


def imports(name: str) -> list[tuple[str, int]]:
    """``(imported module, line)`` of every import in a module; ``from X import y`` names ``X.y`` where
    that is a module of geoseg, else ``X``."""
    path = MODULES[name]
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found += [(a.name, node.lineno) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else []))
            for a in node.names:
                full = f"{base}.{a.name}"
                found.append((full if full in MODULES else base, node.lineno))
    return found


def layer(name: str) -> int:
    best = max((k for k in LAYERS if name == k or name.startswith(k + ".")), key=len)
    return LAYERS[best]


def feature(name: str) -> str | None:
    parts = name.split(".")
    return parts[1] if len(parts) > 1 and parts[1] in FEATURES else None


def test_no_module_imports_from_a_layer_above_it():
    wrong = [f"{m}:{line} imports {imp}" for m in MODULES for imp, line in imports(m)
             if imp.split(".")[0] == "geoseg" and layer(imp) > layer(m)]
    assert not wrong, wrong


def test_capabilities_reach_each_other_only_through_their_package():
    wrong = [f"{m}:{line} imports {imp}" for m in MODULES for imp, line in imports(m)
             if feature(m) and feature(imp) and feature(imp) != feature(m) and imp != f"geoseg.{feature(imp)}"]
    assert not wrong, wrong


def test_no_import_circles():
    graph = {m: {imp for imp, _ in imports(m) if imp in MODULES and imp != m} for m in MODULES}
    index, low, stack, on, cycles, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = set()
            while True:
                w = stack.pop()
                on.discard(w)
                comp.add(w)
                if w == v:
                    break
            if len(comp) > 1:
                cycles.append(sorted(comp))

    for m in graph:
        if m not in index:
            visit(m)
    assert not cycles, cycles


def _design_ray_modules() -> set[str]:
    text = (ROOT / "docs" / "design.md").read_text()
    block = re.search(r"<!-- ray-modules -->(.*?)<!-- /ray-modules -->", text, re.S)
    assert block, "docs/design.md lists the modules that import Ray between <!-- ray-modules --> markers"
    return {"geoseg." + p.removesuffix(".py").replace("/", ".") for p in re.findall(r"`([\w/]+\.py)`", block.group(1))}


def test_ray_is_imported_only_where_the_design_says():
    importing = {m for m in MODULES for imp, _ in imports(m) if imp == "ray" or imp.startswith("ray.")}
    assert importing == _design_ray_modules()
    # and only in the Ray layers (each capability's job.py), the Ray runtime and the Jobs API
    assert all(m in ("geoseg.execution.runtime", "geoseg.execution.submit") or m.endswith(".job") for m in importing), \
        importing


def test_ray_is_imported_inside_functions_only():
    """Importing any module of geoseg imports no Ray (the compute core runs where Ray is not installed)."""
    top = []
    for m in MODULES:
        tree = ast.parse(MODULES[m].read_text())
        for node in tree.body:
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            top += [f"{m}: {n}" for n in names if n == "ray" or n.startswith("ray.")]
    assert not top, top


def test_no_module_is_over_500_lines():
    long = {m: n for m, p in MODULES.items() if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert not long, long


def test_no_stage_takes_the_users_options():
    """The Ray-free stages of a capability take its job context and their rows: never ``PredictOptions``
    (or any ``*Options`` of the command line), never a parameter named ``opts``."""
    stage_modules = [m for m in MODULES if feature(m) and m.rsplit(".", 1)[-1] in ("stages", "finish")]
    assert {feature(m) for m in stage_modules} >= {"predict", "evaluate", "mosaic", "vectorize"}
    wrong = []
    for m in stage_modules:
        for node in ast.walk(ast.parse(MODULES[m].read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                for a in node.args.args + node.args.kwonlyargs:
                    ann = ast.unparse(a.annotation) if a.annotation else ""
                    if a.arg == "opts" or ann.endswith("Options"):
                        wrong.append(f"{m}.{node.name}({a.arg}: {ann})")
    assert not wrong, wrong


def test_every_capability_has_the_same_shape():
    """plan.py (no Ray), stages.py (no Ray), job.py (the Ray layer) in every capability that runs jobs;
    an in-process runner (local.py) where a job can run without Ray (all but train, whose loop is
    Ray Train's); a driver loop shared by both runners (driver.py) where the job's loop is geoseg's."""
    for name in ("predict", "train", "evaluate", "mosaic", "vectorize"):
        for part in ("plan", "stages", "job"):
            if name == "train" and part == "stages":  # train's stages are several modules (data, cache, fit)
                continue
            assert f"geoseg.{name}.{part}" in MODULES, f"geoseg/{name}/{part}.py"
    for name in ("predict", "evaluate", "mosaic", "vectorize"):
        assert f"geoseg.{name}.local" in MODULES, f"geoseg/{name}/local.py"
    for name in ("predict", "mosaic", "vectorize"):
        assert f"geoseg.{name}.driver" in MODULES, f"geoseg/{name}/driver.py"
