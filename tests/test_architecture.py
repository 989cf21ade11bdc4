"""The package's layering, checked on the source (issue 12): no import circles, no import from a lower layer
to a higher one, no file I/O in the training method (distill/), and command-line modules that stay thin.

Every module of `mobilebert/` is parsed with `ast` (nothing is imported), and every `import` / `from ... import`
counts, including those inside functions: a lazy import hides a circle from Python, not from the design.
`from mobilebert.pkg import name` resolves to the submodule `mobilebert.pkg.name` when one exists, otherwise to
the package `mobilebert.pkg` (its `__init__`); relative imports resolve the same way; `from mobilebert import
get_config` resolves through the root package's lazy export table (`_EXPORTS` in mobilebert/__init__.py) to the
module that defines the name. The root package itself is only that table and is not a node of the graph.

Each failure message lists every violation with its file and line.
"""

from __future__ import annotations

import ast
from pathlib import Path


PKG = Path(__file__).resolve().parents[1] / "mobilebert"

# The layer map, top to bottom: a module may import from its own layer or a lower one, never a higher one.
# A module's key is its first name under mobilebert/ (a sub-package or a root module).
LAYERS: list[tuple[str, ...]] = [
    ("cli", "__main__"),
    ("recipes",),
    ("distill", "tasks", "export", "quant", "engine", "data", "tokenizer", "info"),
    ("heads",),
    ("model",),
    ("checkpoint",),
    ("config", "presets"),
    ("errors", "atomic", "outpaths"),
]
# Rules inside the middle layer: (importer, imported) pairs that are forbidden although the layers allow them.
FORBIDDEN = [
    ("export", "quant"),      # quant builds on export (NoNorm folding), never the reverse
    ("engine", "model"),      # the engine trains any nn.Module; it knows no MobileBERT
    ("engine", "heads"),
]
CLI_MAX_LINES = 80            # every file of mobilebert/cli/, its __init__ included (see test_cli_modules_are_thin)



# ------------------------------------------------------------------------------------------- the graph
def module_name(path: Path) -> str:
    parts = list(path.relative_to(PKG.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


MODULES: dict[str, Path] = {module_name(p): p for p in sorted(PKG.rglob("*.py"))}
PACKAGES = {module_name(p) for p in PKG.rglob("__init__.py")}


def root_exports() -> dict[str, str]:
    """`_EXPORTS` of mobilebert/__init__.py: public name -> defining module."""
    for node in ast.walk(ast.parse((PKG / "__init__.py").read_text())):
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "_EXPORTS" for t in node.targets):
            return ast.literal_eval(node.value)
    return {}


EXPORTS = root_exports()


def _resolve(base: str, name: str | None) -> str | None:
    """The module that `from base import name` (or `import base` when name is None) loads."""
    if not (base == "mobilebert" or base.startswith("mobilebert.")):
        return None
    if name is not None and f"{base}.{name}" in MODULES:
        return f"{base}.{name}"
    if base == "mobilebert":
        return EXPORTS.get(name)
    while base not in MODULES and "." in base:   # `import mobilebert.pkg.missing` -> the nearest real module
        base = base.rsplit(".", 1)[0]
    return base if base in MODULES else None


def imports_of(module: str) -> dict[str, int]:
    """Every mobilebert module `module` imports (top level or inside functions) -> first line number."""
    path = MODULES[module]
    package = module if module in PACKAGES else module.rsplit(".", 1)[0]
    found: dict[str, int] = {}
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        targets: list[str | None] = []
        if isinstance(node, ast.Import):
            targets = [_resolve(a.name, None) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                base = f"{base}.{node.module}" if node.module else base
            else:
                base = node.module or ""
            targets = [_resolve(base, a.name) for a in node.names]
        elif (isinstance(node, ast.Call) and getattr(node.func, "attr", None) == "import_module"
              and node.args and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str)):
            targets = [_resolve(node.args[0].value, None)]
        for t in targets:
            if t and t != module and t != "mobilebert":
                found.setdefault(t, node.lineno)
    return found


GRAPH: dict[str, dict[str, int]] = {m: imports_of(m) for m in MODULES if m != "mobilebert"}


def _key(module: str) -> str:
    """The layer-map key of a module: its first component under mobilebert (cli, recipes, model, ...)."""
    return module.split(".")[1]


def layer_of(module: str) -> int:
    """0 is the top (cli); larger is lower."""
    key = _key(module)
    for i, keys in enumerate(LAYERS):
        if key in keys:
            return i
    raise AssertionError(f"{module}: not in the layer map of tests/test_architecture.py; add it to LAYERS")


def cycles(graph: dict[str, dict[str, int]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []
    counter = 0
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, it = work[-1]
            nxt = next((w for w in it if w in graph), None)
            if nxt is not None:
                if nxt not in index:
                    index[nxt] = low[nxt] = counter
                    counter += 1
                    stack.append(nxt)
                    on_stack.add(nxt)
                    work.append((nxt, iter(sorted(graph[nxt]))))
                elif nxt in on_stack:
                    low[node] = min(low[node], index[nxt])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                comp = []
                while True:
                    w = stack.pop()
                    on_stack.discard(w)
                    comp.append(w)
                    if w == node:
                        break
                if len(comp) > 1:
                    out.append(sorted(comp))
    return out


def _where(a: str, b: str) -> str:
    return f"{MODULES[a].relative_to(PKG.parent)}:{GRAPH[a][b]}"


def _cycle_edges(comp: list[str]) -> list[str]:
    members = set(comp)
    return [f"{a} -> {b} ({_where(a, b)})" for a in comp for b in sorted(GRAPH[a]) if b in members]


def _report(title: str, lines: list[str]) -> str:
    return f"{title} ({len(lines)}):\n  " + "\n  ".join(lines)


# ------------------------------------------------------------------------------------------- the tests
def test_the_graph_sees_every_module_and_lazy_imports():
    """The checker itself: it parses every file, finds imports inside functions and resolves imported names."""
    assert {"mobilebert.cli", "mobilebert.recipes.train", "mobilebert.model", "mobilebert.errors"} <= set(MODULES)
    assert "mobilebert.errors" in GRAPH["mobilebert.cli"]            # top-level import
    assert "mobilebert.recipes.train" in GRAPH["mobilebert.cli.train"]   # inside run()
    assert EXPORTS["get_config"] == "mobilebert.presets"
    assert _resolve("mobilebert", "atomic") == "mobilebert.atomic"
    assert _resolve("mobilebert.data", "IGNORE_INDEX") == "mobilebert.data"
    for m in GRAPH:
        layer_of(m)   # every module has a layer


def test_cycle_finder_finds_a_circle():
    graph = {"a": {"b": 1}, "b": {"c": 1}, "c": {"a": 1}, "d": {"a": 1}}
    assert cycles(graph) == [["a", "b", "c"]]
    assert cycles({"a": {"b": 1}, "b": {}}) == []


def test_no_import_circles():
    found = cycles(GRAPH)
    lines = [f"{' <-> '.join(c)}: " + "; ".join(_cycle_edges(c)) for c in found]
    assert not found, _report("import circles between modules", lines)


def layer_violations(graph: dict[str, dict[str, int]]) -> list[str]:
    bad = []
    for a, targets in sorted(graph.items()):
        for b, line in sorted(targets.items()):
            if layer_of(b) < layer_of(a):
                bad.append(f"{a} ({_key(a)}) imports {b} ({_key(b)}) at line {line}")
            elif (_key(a), _key(b)) in FORBIDDEN:
                bad.append(f"{a} imports {b} at line {line}: {_key(a)} never imports {_key(b)}")
    return bad


def test_layer_checker_finds_upward_and_forbidden_imports():
    graph = {"mobilebert.model": {"mobilebert.heads": 3, "mobilebert.config": 4},
             "mobilebert.export.onnx": {"mobilebert.quant.ort": 5, "mobilebert.model": 6},
             "mobilebert.engine.loop": {"mobilebert.model": 7}, "mobilebert.quant.ort": {"mobilebert.export.onnx": 8}}
    assert layer_violations(graph) == [
        "mobilebert.engine.loop imports mobilebert.model at line 7: engine never imports model",
        "mobilebert.export.onnx imports mobilebert.quant.ort at line 5: export never imports quant",
        "mobilebert.model (model) imports mobilebert.heads (heads) at line 3"]


def test_no_import_from_a_lower_layer_to_a_higher_one():
    bad = layer_violations(GRAPH)
    assert not bad, _report("imports against the layering (cli > recipes > method/tasks/export/quant/engine/data "
                            "> heads > model > checkpoint > config > base)", bad)


# Calls that touch the file system. Attribute calls are matched on the attribute (read_text on any object),
# module calls on the dotted name.
IO_CALLS = {"open", "io.open", "torch.load", "torch.save", "json.load", "json.dump", "yaml.safe_load",
            "yaml.safe_dump", "yaml.load", "yaml.dump", "np.load", "np.save", "numpy.load", "numpy.save",
            "pickle.load", "pickle.dump", "os.makedirs", "os.remove", "os.replace", "os.rename", "shutil.copy",
            "shutil.copyfile", "shutil.move", "shutil.rmtree", "load_file", "save_file", "safe_open"}
IO_METHODS = {"read_text", "read_bytes", "write_text", "write_bytes", "mkdir", "unlink", "touch", "rmdir",
              "save_pretrained", "from_pretrained"}
IO_MODULES = {"safetensors", "shutil", "pickle", "mobilebert.atomic", "mobilebert.checkpoint",
              "mobilebert.engine.checkpoint"}


def _dotted(node: ast.AST) -> str:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return f"{_dotted(node.value)}.{node.attr}"
    return ""


def file_io(path: Path) -> list[str]:
    found = []
    rel = path.relative_to(PKG.parent)
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Call):
            name = _dotted(node.func)
            attr = node.func.attr if isinstance(node.func, ast.Attribute) else None
            if name in IO_CALLS or attr in IO_METHODS:
                found.append(f"{rel}:{node.lineno}: {name or attr}(...)")
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
            names += [f"{node.module}.{a.name}" for a in node.names] if isinstance(node, ast.ImportFrom) else []
            for n in names:
                if n.split(".")[0] in IO_MODULES or n in IO_MODULES:
                    found.append(f"{rel}:{node.lineno}: import {n}")
                    break
    return found


def test_file_io_finder_finds_reads_and_writes(tmp_path, monkeypatch):
    src = tmp_path / "mobilebert" / "distill" / "x.py"
    src.parent.mkdir(parents=True)
    src.write_text("import torch\nfrom safetensors.torch import load_file\n\ndef f(p):\n"
                   "    torch.save({}, p)\n    return p.read_text(), open(p).read(), torch.zeros(2)\n")
    monkeypatch.setattr(f"{__name__}.PKG", tmp_path / "mobilebert")
    found = sorted(f.split(": ", 1)[1] for f in file_io(src))
    assert found == ["import safetensors.torch", "open(...)", "p.read_text(...)", "torch.save(...)"]


def test_distill_does_no_file_io():
    found = [f for p in sorted((PKG / "distill").glob("*.py")) for f in file_io(p)]
    assert not found, _report("file I/O in distill/ (the method; reading and writing belongs to recipes/)", found)


def cli_lengths() -> dict[str, int]:
    return {str(p.relative_to(PKG.parent)): len(p.read_text().splitlines())
            for p in sorted((PKG / "cli").glob("*.py"))}


def test_cli_modules_are_thin():
    """A command-line module parses arguments and calls a recipe; 80 lines is enough for that. The package
    __init__ counts too: it holds the dispatcher and the error mapping, where logic would creep in first."""
    lengths = cli_lengths()
    assert "mobilebert/cli/__init__.py" in lengths and "mobilebert/cli/train.py" in lengths
    long = [f"{name}: {n} lines" for name, n in lengths.items() if n > CLI_MAX_LINES]
    assert not long, _report(f"command-line modules over {CLI_MAX_LINES} lines (move the work into recipes/)", long)
