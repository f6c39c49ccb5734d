"""The layers as the tree shows them (docs/DESIGN.md §3): each imports only from below.

core (maths and store) -> integration (Lightning glue) -> analysis (reads stores) -> experiments (the app).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "curvature_callback"
#: what each layer may import from this package
ALLOWED = {
    "core": {"core"},
    "integration": {"core", "integration"},
    "analysis": {"core", "analysis"},  # reads stores: never the training glue
    "experiments": {"core", "integration", "analysis", "experiments"},
}
#: outside libraries a layer (or a module) must not import
FORBIDDEN = {
    "core": {"lightning", "hydra", "omegaconf", "wandb", "matplotlib", "sklearn", "torchvision"},
    "core/store.py": {"torch"},
    **{f"core/store_{part}.py": {"torch"} for part in ("format", "reader", "journal", "locking", "checks", "compat",
                                                      "create")},
    "core/channels/values.py": {"torch"},
    "core/settings.py": {"torch"},
    "core/numeric.py": {"torch"},
    "core/corrections.py": {"torch"},
    "core/safe_paths.py": {"torch", "numpy"},
    "integration": {"hydra", "omegaconf", "matplotlib", "sklearn"},
    "analysis": {"lightning", "hydra", "omegaconf"},
}
MODULES = sorted(p for p in PACKAGE.rglob("*.py") if p.parent != PACKAGE)


def imports(path: Path) -> set[str]:
    """Every module name a file imports, at any depth (lazy imports inside functions count too)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_each_layer_imports_only_from_below(path):
    relative = path.relative_to(PACKAGE)
    layer = relative.parts[0]
    assert layer in ALLOWED, f"{relative}: a module outside the four layers"
    ours = {n.split(".")[1] for n in imports(path) if n.startswith("curvature_callback.")}
    assert ours <= ALLOWED[layer], f"{relative} imports from {sorted(ours - ALLOWED[layer])}"
    roots = {n.split(".")[0] for n in imports(path)}
    for key in (layer, str(relative)):
        assert not roots & FORBIDDEN.get(key, set()), f"{relative} imports {sorted(roots & FORBIDDEN[key])}"


def test_the_public_api_and_the_console_scripts_resolve():
    import curvature_callback
    from curvature_callback import CurvatureCallback, CurvatureStore, WithIndex, input_curvature, sample_outputs

    assert curvature_callback.__all__ == ["input_curvature", "CurvatureCallback", "CurvatureStore", "WithIndex",
                                          "sample_outputs", "apply_corrections"]
    assert WithIndex.__module__.endswith("core.feeding") and sample_outputs.__module__.endswith("training_steps")
    assert callable(input_curvature) and CurvatureCallback.__module__.endswith("integration.callback")
    assert CurvatureStore.__module__.endswith("core.store")
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+

    scripts = tomllib.loads((PACKAGE.parent / "pyproject.toml").read_text())["project"]["scripts"]
    import importlib

    for name, target in scripts.items():
        module, function = target.split(":")
        assert callable(getattr(importlib.import_module(module), function)), name
