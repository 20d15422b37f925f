"""The layout holds: imports flow one way, no cycles, no private names across packages, small
modules, settings read in one place (docs/architecture.md).

Every import counts, at module level or inside a function: a lazy import is still a dependency.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("xmodal", "backend", "workers")
MAX_LINES = 500

# lower number = lower layer; a module may import its own layer or a lower one
LAYERS = [
    (0, r"xmodal\.core(\..*)?"),
    (1, r"xmodal(\.(errors|logfmt|fileio|settings|redis_conn))?"),
    (2, r"xmodal\.(encoders|datasets|project|index|labelstudio|jobs|evaluation)(\..*)?"),
    (3, r"(backend|workers)(\..*)?"),
    (4, r"xmodal\.(cli|demo|simulation|benchmarks)(\..*)?"),
]
LAYER_NAMES = {0: "core", 1: "base", 2: "library", 3: "services", 4: "applications"}


def layer(module: str) -> int:
    for rank, pattern in LAYERS:
        if re.fullmatch(pattern, module):
            return rank
    raise AssertionError(f"{module} is in no layer of tests/test_architecture.py: add it")


def modules() -> dict[str, Path]:
    found = {}
    for package in PACKAGES:
        for path in (ROOT / package).rglob("*.py"):
            parts = list(path.relative_to(ROOT).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            found[".".join(parts)] = path
    return found


MODULES = modules()


def owner(name: str) -> str | None:
    """The project module that ``name`` (a module or a name inside one) lives in."""
    while name and name not in MODULES:
        name = name.rpartition(".")[0]
    return name or None


def package_of(module: str) -> str:
    """The package a module belongs to for the private-name rule: ``xmodal.index.store`` ->
    ``xmodal.index``; top-level modules of ``xmodal`` and the services count as their own."""
    parts = module.split(".")
    return ".".join(parts[:2]) if parts[0] == "xmodal" and len(parts) > 2 else module


def imports(module: str) -> list[tuple[str, str | None, int]]:
    """(imported project module, imported name or attribute, line) for every import and every
    ``module._private`` attribute use in ``module``."""
    path = MODULES[module]
    tree = ast.parse(path.read_text())
    pkg = module if path.name == "__init__.py" else module.rpartition(".")[0]
    out, aliases = [], {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                target = owner(alias.name)
                if target:
                    out.append((target, None, node.lineno))
                    if alias.asname:
                        aliases[alias.asname] = target
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = pkg.split(".")[: len(pkg.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            for alias in node.names:
                full = f"{base}.{alias.name}"
                target = owner(full if full in MODULES else base)
                if target:
                    out.append((target, None if full in MODULES else alias.name, node.lineno))
                    if full in MODULES:
                        aliases[alias.asname or alias.name] = full
    for node in ast.walk(tree):   # `session.WebhookPage`-style uses of another module's privates
        if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name)
                and node.value.id in aliases and node.attr.startswith("_")
                and not node.attr.startswith("__")):
            out.append((aliases[node.value.id], node.attr, node.lineno))
    return [(t, name, line) for t, name, line in out if t != module]


GRAPH = {m: imports(m) for m in MODULES}


def test_no_import_cycles():
    edges = {m: {t for t, _, _ in deps} for m, deps in GRAPH.items()}
    cycles, index, low, stack, on_stack = [], {}, {}, [], set()

    def visit(v):   # Tarjan's strongly connected components
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
                cycles.append(sorted(component))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    assert cycles == []


def test_imports_flow_down_the_layers():
    upward = [f"{m}:{line} imports {t} ({LAYER_NAMES[layer(m)]} -> {LAYER_NAMES[layer(t)]})"
              for m, deps in GRAPH.items() for t, _, line in deps if layer(t) > layer(m)]
    assert upward == []


def test_the_two_services_do_not_import_each_other():
    crossing = [f"{m}:{line} imports {t}" for m, deps in GRAPH.items() for t, _, line in deps
                if {m.split(".")[0], t.split(".")[0]} == {"backend", "workers"}]
    assert crossing == []


def test_no_private_name_is_used_across_packages():
    leaks = [f"{m}:{line} uses {t}.{name}" for m, deps in GRAPH.items() for t, name, line in deps
             if name and name.startswith("_") and not name.startswith("__")
             and package_of(m) != package_of(t)]
    assert leaks == []


def test_no_module_is_over_500_lines():
    long = {m: n for m, p in MODULES.items() if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert long == {}


def test_the_environment_is_read_in_one_place():
    """Every setting is read by xmodal/settings.py (documented in its table); nothing else reads
    one from the environment (children's environments are still written where they start)."""
    from xmodal.settings import SETTINGS

    names = "|".join(SETTINGS)
    read = re.compile(rf"""(environ\.get|getenv)\(\s*["']({names})["']|environ\[["']({names})["']\](?!\s*=)""")
    reads = [f"{m}:{n}: {line.strip()}" for m, p in MODULES.items() if m != "xmodal.settings"
             for n, line in enumerate(p.read_text().splitlines(), 1) if read.search(line)]
    assert reads == []


def test_the_configuration_page_is_the_settings_table():
    from xmodal.settings import markdown

    assert (ROOT / "docs/configuration.md").read_text() == markdown(), \
        "regenerate it: python -m xmodal.settings > docs/configuration.md"
