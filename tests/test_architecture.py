"""The package's layering (docs/architecture.md): no import loops, no upward imports, a torch-free robot side.

The import graph is read from the source (every ``import``/``from ... import`` of ``realm``,
at module level or inside functions), so a lazy import cannot hide a loop. Registry entries
(``realm.registry``) name modules as strings and are loaded on use: a plugin table, not an import.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

SRC = Path(__file__).resolve().parents[1] / "src"

#: Layers, lowest first: a module may import its own layer and the layers below it, never above.
#: Keys are module names or package prefixes ("realm.data." covers every module under it).
LAYERS: list[tuple[str, tuple[str, ...]]] = [
    ("base", ("realm.errors", "realm.io", "realm.threads", "realm.registry")),
    ("signals", ("realm.motion", "realm.audio")),
    ("data and metrics", ("realm.data", "realm.data.", "realm.text", "realm.metrics", "realm.checkpoint", "realm")),
    ("motion consumers (no model, no torch)", ("realm.embodiment", "realm.embodiment.", "realm.render", "realm.render.",
                                               "realm.web", "realm.web.")),
    ("models", ("realm.models", "realm.models.")),
    ("running models", ("realm.generate", "realm.generate_lm", "realm.eval", "realm.serve", "realm.train", "realm.train.")),
    ("jobs", ("realm.bench", "realm.bench.", "realm.demo", "realm.report")),
    ("front end", ("realm.cli", "realm.cli.")),
]


def _modules() -> dict[str, Path]:
    out = {}
    for p in (SRC / "realm").rglob("*.py"):
        parts = p.relative_to(SRC).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = p
    return out


def import_graph() -> dict[str, set[str]]:
    """module -> the package modules it imports (resolved to the deepest module that exists)."""
    mods = _modules()
    graph: dict[str, set[str]] = {m: set() for m in mods}
    for m, path in mods.items():
        pkg = m if path.name == "__init__.py" else m.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    up = pkg.split(".")[: len(pkg.split(".")) - node.level + 1]
                    base = ".".join(up + ([base] if base else []))
                names = [base] + [f"{base}.{a.name}" for a in node.names]
            else:
                continue
            for name in names:
                while name and name not in mods:
                    name = name.rpartition(".")[0]
                if name.startswith("realm") and name != m:
                    graph[m].add(name)
    return graph


def layer_of(module: str) -> int:
    best, depth = None, -1
    for i, (_, keys) in enumerate(LAYERS):
        for k in keys:
            hit = module == k or (k.endswith(".") and module.startswith(k))
            if hit and len(k) > depth:
                best, depth = i, len(k)
    if best is None:
        raise AssertionError(f"{module} is in no layer of tests/test_architecture.py (and docs/architecture.md): add it")
    return best


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_the_checker_sees_loops_and_upward_imports():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []
    assert layer_of("realm.models.baselines.lstm") > layer_of("realm.data.clip") > layer_of("realm.motion")
    assert layer_of("realm.train.baselines") == layer_of("realm.generate")


def test_no_import_loops():
    assert cycles(import_graph()) == []


def test_no_upward_imports():
    graph = import_graph()
    upward = [f"{m} ({LAYERS[layer_of(m)][0]}) imports {t} ({LAYERS[layer_of(t)][0]})"
              for m, targets in sorted(graph.items()) for t in sorted(targets) if layer_of(t) > layer_of(m)]  # fmt: skip
    assert upward == []


def test_nothing_under_models_imports_a_trainer_or_a_runner():
    graph = import_graph()
    bad = [(m, t) for m, ts in graph.items() if m.startswith("realm.models") for t in ts
           if t.startswith(("realm.train", "realm.generate", "realm.eval", "realm.bench", "realm.cli"))]  # fmt: skip
    assert bad == []


def test_reading_and_exporting_a_motion_file_imports_no_torch(tmp_path):
    from realm.motion import SPECS

    spec = SPECS["arkit58"]
    x = np.tile(spec.neutral if hasattr(spec, "neutral") else np.zeros(spec.dim, np.float32), (60, 1)).astype(np.float32)
    np.savez(tmp_path / "m.npz", listener=x[None], spec=np.array("arkit58"), fps=np.array(30.0))
    code = (
        "import sys\n"
        "from realm.motion import load_motion_file\n"
        "from realm.embodiment.export import export_motion\n"
        f"mf = load_motion_file({str(tmp_path / 'm.npz')!r})\n"
        f"export_motion({str(tmp_path / 'm.npz')!r}, 'ameca-jsonl', {str(tmp_path / 'o.jsonl')!r})\n"
        f"export_motion({str(tmp_path / 'm.npz')!r}, 'livelink-csv', {str(tmp_path / 'o.csv')!r})\n"
        "import realm.embodiment.sim, realm.render.video, realm.cli\n"
        "print(sorted(m for m in ('torch', 'lightning', 'realm.models', 'realm.generate') if m in sys.modules))\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.strip() == "[]"
    assert (tmp_path / "o.jsonl").stat().st_size > 0 and (tmp_path / "o.csv").stat().st_size > 0


@pytest.mark.parametrize("module", ["realm.registry", "realm.checkpoint"])
def test_registry_and_checkpoint_import_no_model(module):
    code = f"import sys, {module}\nprint([m for m in sys.modules if m.startswith('realm.models') or m == 'torch'])"
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.strip() == "[]"
