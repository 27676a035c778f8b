"""The package a user imports is the op and its modules: ``import jconv`` pulls in no optional
dependency and nothing of the applications, and no jconv module imports the experiments."""

from __future__ import annotations

import ast
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OPTIONAL = ("optax", "orbax", "tqdm", "matplotlib", "torch", "ml_collections", "sklearn", "jconv_experiments")


def test_import_jconv_loads_no_optional_dependency():
    code = ("import sys, jconv; jconv.conv2d; "
            f"print(sorted({{m.split('.')[0] for m in sys.modules}} & set({OPTIONAL!r})))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env=dict(os.environ, JAX_PLATFORMS="cpu"), cwd=ROOT)
    assert out.stdout.strip() == "[]", out.stdout


def _imports(path: str) -> set[str]:
    with open(path) as f:
        tree = ast.parse(f.read())
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names.add(node.module)
    return names


def test_the_library_never_imports_its_applications():
    offenders = []
    for folder, _, files in os.walk(os.path.join(ROOT, "jconv")):
        for f in files:
            if f.endswith(".py"):
                path = os.path.join(folder, f)
                bad = {m for m in _imports(path) if m.split(".")[0] in OPTIONAL}
                if bad:
                    offenders.append((os.path.relpath(path, ROOT), sorted(bad)))
    assert not offenders, offenders
