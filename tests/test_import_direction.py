"""Every import in the package points down its layers:

    kernels <- core (sampleattn: operator, config, plan, rules, reference...) <- integrations
            <- models (catalogue, loading, capture, calibration data) <- store <- tuner, eval, bench

A module may import its own layer and any layer below it, never one above it, and the three
top layers (tuner, eval, bench) do not import each other. Every module of every package that
pyproject.toml installs is read with `ast`: module-level imports, imports inside functions and
``TYPE_CHECKING`` blocks, ``importlib.import_module("...")`` with a literal name, and the
submodules named to ``lazy_loader.attach``. No edge is exempt.
"""

from __future__ import annotations

import ast
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

#: Layer of each package prefix, lowest first; a module belongs to its longest matching prefix.
LAYERS: dict[str, tuple[int, str]] = {
    "sampleattn.kernels": (0, "kernels"),
    "sampleattn": (1, "core"),
    "sampleattn.integrations": (2, "integrations"),
    "sampleattn.models": (3, "models"),
    "sampleattn.store": (4, "store"),
    "sampleattn.tuner": (5, "tuner"),
    "sampleattn.eval": (5, "eval"),
    "sampleattn.bench": (5, "bench"),
}

LAYERS_BY_NAME = {name: rank for rank, name in LAYERS.values()}


def layer_of(module: str) -> tuple[int, str] | None:
    """``(rank, name)`` of the layer holding ``module``; None for modules outside the package."""
    parts = module.split(".")
    for end in range(len(parts), 0, -1):
        found = LAYERS.get(".".join(parts[:end]))
        if found is not None:
            return found
    return None


def installed_modules() -> dict[str, Path]:
    """Module name -> file of every module of the packages pyproject.toml installs."""
    setuptools = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    folders = {package: ROOT / folder for package, folder in setuptools["package-dir"].items()}
    modules = {}
    for package in setuptools["packages"]:
        # The folder of a package is its own mapping, or its parent's mapping plus its name.
        base = max((p for p in folders if package == p or package.startswith(p + ".")), key=len)
        folder = folders[base].joinpath(*package[len(base):].split(".")[1:])
        for path in folder.glob("*.py"):
            modules[package if path.stem == "__init__" else f"{package}.{path.stem}"] = path
    return modules


def imported_names(module: str, source: str, *, is_package: bool) -> list[tuple[str, int]]:
    """``(imported module, line)`` for every import in ``source``, relative ones resolved.

    ``from X import y`` counts as an import of ``X.y`` (which may be a submodule) and of ``X``.
    """
    package = module if is_package else module.rpartition(".")[0]
    found: list[tuple[str, int]] = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found += [(alias.name, node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            found.append((target, node.lineno))
            found += [(f"{target}.{alias.name}", node.lineno) for alias in node.names if alias.name != "*"]
        elif isinstance(node, ast.Call):
            name = ast.unparse(node.func)
            if name.endswith("import_module") and node.args and isinstance(node.args[0], ast.Constant):
                found.append((str(node.args[0].value), node.lineno))
            elif name.endswith("attach"):  # lazy_loader.attach(__name__, submodules, submod_attrs)
                for argument in [*node.args[1:], *(k.value for k in node.keywords)]:
                    if isinstance(argument, (ast.Dict, ast.List, ast.Set, ast.Tuple)):
                        keys = argument.keys if isinstance(argument, ast.Dict) else argument.elts
                        found += [(f"{module}.{k.value}", node.lineno) for k in keys
                                  if isinstance(k, ast.Constant) and isinstance(k.value, str)]
    return found


def wrong_edges(module: str, source: str, *, is_package: bool, path: str = "") -> list[str]:
    """The imports of ``module`` that point up, or sideways between two top layers, named."""
    own = layer_of(module)
    first: dict[tuple[int, str], str] = {}  # (line, layer) -> shortest name: one report per import
    for target, line in imported_names(module, source, is_package=is_package):
        other = layer_of(target)
        if own is None or other is None or other[1] == own[1] or other[0] < own[0]:
            continue
        if (line, other[1]) not in first or len(target) < len(first[line, other[1]]):
            first[line, other[1]] = target
    return [f"{path or module}:{line}: {module} ({own[1]}) imports {target} ({layer}): points "
            f"{'up' if LAYERS_BY_NAME[layer] > own[0] else 'sideways'}"
            for (line, layer), target in sorted(first.items())]


def test_every_import_points_down():
    modules = installed_modules()
    assert {"sampleattn.operator", "sampleattn.kernels", "sampleattn.models.catalog", "sampleattn.store.store",
            "sampleattn.tuner.search", "sampleattn.eval.runner", "sampleattn.bench.harness"} <= set(modules)
    wrong = []
    for module, path in sorted(modules.items()):
        wrong += wrong_edges(module, path.read_text(), is_package=path.stem == "__init__",
                             path=str(path.relative_to(ROOT)))
    assert not wrong, "imports that point up the layers (see this test's docstring):\n" + "\n".join(wrong)


def test_the_walk_finds_every_kind_of_import():
    """The checker itself: an up-edge hidden in a function, a relative import, a dynamic import
    and a lazy export are each named; imports of the same or a lower layer are not."""
    source = '''
import torch
from sampleattn.kernels import sampling
from .catalog import ModelSpec
from . import loading

def load():
    from sampleattn.store import ProfileStore
    from ..tuner import search

if False:
    import importlib
    importlib.import_module("sampleattn.bench.harness")
'''
    assert wrong_edges("sampleattn.models.text", source, is_package=False) == [
        "sampleattn.models.text:8: sampleattn.models.text (models) imports sampleattn.store (store): points up",
        "sampleattn.models.text:9: sampleattn.models.text (models) imports sampleattn.tuner (tuner): points up",
        "sampleattn.models.text:13: sampleattn.models.text (models) imports sampleattn.bench.harness (bench): "
        "points up",
    ]
    lazy = 'import lazy_loader\n__getattr__, __dir__, __all__ = lazy_loader.attach(__name__, submod_attrs={"x": ["y"]})\n'
    assert wrong_edges("sampleattn.tuner", "from sampleattn import eval, store\n", is_package=True) == [
        "sampleattn.tuner:1: sampleattn.tuner (tuner) imports sampleattn.eval (eval): points sideways",
    ]
    assert imported_names("sampleattn.store", lazy, is_package=True)[-1] == ("sampleattn.store.x", 2)
