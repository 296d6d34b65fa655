"""The encoder's import graph: every import at module top, no cycle, no component above it.

A function-local import is how a cycle hides (``train`` <-> ``evaluate`` <-> ``baselines`` once did);
only heavy optional dependencies may be imported inside a function.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OPTIONAL_HEAVY = {"faiss", "pyspark"}  # may be imported lazily, inside the function that needs them
FORBIDDEN = {
    "store",
    "pipelines",
    "soe",
    "dags",
    "bench",
}  # encoder sits below these (pyproject importlinter)


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(tree: ast.AST, package: str) -> list[tuple[str, ast.AST]]:
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(alias.name, node) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(
                    package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else [])
                )
            out += [(f"{base}.{alias.name}", node) for alias in node.names] + [(base, node)]
    return out


def _graph():
    modules, local, edges = {}, [], {}
    for path in sorted((ROOT / "encoder").rglob("*.py")):
        name = _module_name(path)
        tree = ast.parse(path.read_text(), str(path))
        modules[name] = tree
        top = set(map(id, tree.body))
        package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
        for target, node in _imports(tree, package):
            if id(node) not in top and target.split(".")[0] not in OPTIONAL_HEAVY:
                local.append(f"{name}:{node.lineno} imports {target}")
            edges.setdefault(name, set()).add(target)
    internal = {m: {t for t in targets if t in modules and t != m} for m, targets in edges.items()}
    return modules, local, edges, internal


def test_every_encoder_import_is_at_module_top():
    _, local, _, _ = _graph()
    assert not local, "function-local imports (move them to the top):\n" + "\n".join(local)


def test_the_encoder_import_graph_is_acyclic():
    modules, _, _, internal = _graph()
    state: dict[str, int] = {}
    stack: list[str] = []
    cycles = []

    def visit(m: str) -> None:
        state[m] = 1
        stack.append(m)
        for n in sorted(internal.get(m, ())):
            if state.get(n) == 1:
                cycles.append(" -> ".join([*stack[stack.index(n) :], n]))
            elif n not in state:
                visit(n)
        stack.pop()
        state[m] = 2

    for m in sorted(modules):
        if m not in state:
            visit(m)
    assert not cycles, "import cycles:\n" + "\n".join(cycles)
    assert "encoder.evaluate" in internal["encoder.train"]  # the graph is really read (train uses evaluate)


def test_the_encoder_imports_no_component_above_it():
    _, _, edges, _ = _graph()
    bad = sorted(
        f"{m} -> {t}" for m, targets in edges.items() for t in targets if t.split(".")[0] in FORBIDDEN
    )
    assert not bad, bad


def test_settings_modules_load_without_torch():
    """The config sections load with every CLI call: they must not pull torch in."""
    modules = "encoder.settings, encoder.inference.settings, encoder.config"
    code = f"import sys, {modules}; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True)
    assert out.stdout.strip() == "False"
