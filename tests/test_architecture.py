"""The layering rules: core and kernels never touch ComfyUI; no import cycles; node modules stand on the core and the
shared node-side modules alone; only one import name is installed."""

from __future__ import annotations

import ast
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
COMFY_MODULES = {"comfy", "folder_paths", "comfy_extras", "comfy_execution", "server", "execution", "nodes", "latent_preview"}


def imports_of(path: Path) -> list[tuple[int, str, int]]:
    """(level, module, line) for every import statement; level > 0 means relative."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found += [(0, alias.name, node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            found.append((node.level, node.module or "", node.lineno))
    return found


def imported_files(path: Path) -> list[tuple[Path, int]]:
    """(file, line) of every module of the pack that ``path`` imports relatively, at module level or inside a function.

    ``from .x import y`` is ``x.py``; ``from . import a, b`` is ``a.py`` and ``b.py`` (or the package's ``__init__.py``
    for a name that is no module)."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if not isinstance(node, ast.ImportFrom) or node.level == 0:
            continue
        base = ROOT / resolve(path, node.level, node.module or "")
        if base.with_suffix(".py").is_file():
            found.append((base.with_suffix(".py"), node.lineno))
        elif base.is_dir():
            for alias in node.names:
                module = base / f"{alias.name}.py"
                found.append((module if module.is_file() else base / "__init__.py", node.lineno))
    return found


def import_cycle(files: list[Path]) -> list[str] | None:
    """One import cycle among ``files`` as ``["a.py:3", "b.py:7", ...]`` (each module and the line that imports the next),
    or None."""
    graph = {path: [(target, line) for target, line in imported_files(path) if target in files] for path in files}
    state: dict[Path, str] = {}  # "open" while on the current path, "done" once every path from it is explored
    trail: list[tuple[Path, int]] = []

    def visit(path: Path) -> list[str] | None:
        state[path] = "open"
        for target, line in graph[path]:
            trail.append((path, line))
            if state.get(target) == "open":
                start = next(i for i, (module, _) in enumerate(trail) if module == target)
                return [f"{module.relative_to(ROOT)}:{at}" for module, at in trail[start:]]
            if target not in state and (cycle := visit(target)):
                return cycle
            trail.pop()
        state[path] = "done"
        return None

    for path in files:
        if path not in state and (cycle := visit(path)):
            return cycle
    return None


def is_node_module(path: Path) -> bool:
    """A module of ``nodes/`` that registers nodes (assigns ``NODE_CLASS_MAPPINGS``); ``nodes/__init__.py`` gathers them."""
    tree = ast.parse(path.read_text(), filename=str(path))
    assigned = {t.id for n in tree.body if isinstance(n, (ast.Assign, ast.AnnAssign))
                for t in (n.targets if isinstance(n, ast.Assign) else [n.target]) if isinstance(t, ast.Name)}
    return path.name != "__init__.py" and "NODE_CLASS_MAPPINGS" in assigned


def package_files(package: str) -> list[Path]:
    """Every module of a package folder, sub-packages included (e.g. ``stylemamba/training``)."""
    return sorted((ROOT / package).rglob("*.py"))


def resolve(path: Path, level: int, module: str) -> str:
    """A relative import as a path-like name from the repository root, e.g. ``stylemamba/training/fit``."""
    base = path.parent
    for _ in range(level - 1):
        base = base.parent
    return "/".join([*base.relative_to(ROOT).parts, *filter(None, module.split("."))])


def layer_of(name: str) -> str:
    """Which layer a module belongs to: the model core, training, cli, stylestudio, kernels or nodes."""
    parts = name.split("/")
    if parts[0] == "stylemamba" and len(parts) > 1 and parts[1] in ("training", "cli"):
        return parts[1]
    return parts[0]


#: Which layers each layer may import (data flows node → cli/training → core → kernels, never back).
#: ``errors`` (the pack's exception base, which imports nothing) lies under every layer but the standalone kernels.
ALLOWED = {
    "kernels": {"kernels"},
    "stylemamba": {"stylemamba", "kernels", "errors"},
    "stylestudio": {"stylestudio", "errors"},
    "vct": {"vct", "stylestudio", "errors"},
    "training": {"training", "stylemamba", "kernels", "errors"},
    "cli": {"cli", "training", "stylemamba", "kernels", "errors"},
    "nodes": {"nodes", "training", "stylemamba", "stylestudio", "vct", "kernels", "errors"},
}


@pytest.mark.parametrize("package", ["stylemamba", "stylestudio", "vct", "kernels", "nodes"])
def test_layers_import_only_downwards(package):
    """The model core never imports training or the CLI, training never imports the CLI, nothing imports nodes."""
    for path in package_files(package):
        own = layer_of("/".join(path.relative_to(ROOT).with_suffix("").parts))
        for level, module, line in imports_of(path):
            if level == 0:
                continue
            target = layer_of(resolve(path, level, module))
            assert target in ALLOWED[own], f"{path.relative_to(ROOT)}:{line} ({own}) imports {module!r} ({target})"


@pytest.mark.parametrize("package", ["stylemamba", "stylestudio", "vct", "kernels"])
def test_core_never_imports_comfyui_or_nodes(package):
    for path in package_files(package):
        for level, module, line in imports_of(path):
            top = module.split(".")[0]
            assert not (level == 0 and top in COMFY_MODULES), f"{path.name}:{line} imports {module}"
            assert not (level >= 2 and top == "nodes"), f"{path.name}:{line} imports the nodes layer"


@pytest.mark.parametrize("package", ["stylemamba", "stylestudio", "kernels", "nodes"])
def test_no_import_cycle_inside_a_package(package):
    """A cycle hides the order a reader should take a package in, and a function-level import that closes one (as a
    registry importing the modules that import it back) is still a cycle: every relative import counts."""
    cycle = import_cycle(package_files(package))
    assert cycle is None, f"import cycle in {package}/: {' -> '.join(cycle)} -> back to the first"


def test_node_modules_never_import_each_other():
    """Each node module stands on the core and the shared node-side modules (those that register no nodes:
    ``comfy_bridge``, ``widgets``, ``image_sockets``, ``stylestudio_base``), never on another node module."""
    node_modules = [path for path in package_files("nodes") if is_node_module(path)]
    assert len(node_modules) >= 7  # the test looks at the real node modules, not at none
    for path in node_modules:
        for target, line in imported_files(path):
            assert target not in node_modules and target != ROOT / "nodes" / "__init__.py", (
                f"{path.relative_to(ROOT)}:{line} imports the node module {target.relative_to(ROOT)}: "
                f"move what both need into a shared node-side module")


def test_kernels_import_nothing_above_them():
    for path in package_files("kernels"):
        for level, module, line in imports_of(path):
            assert level <= 1, f"kernels/{path.name}:{line} imports from {'.' * level}{module}"


def test_errors_module_imports_nothing_from_the_pack():
    """Every layer imports the exception base, so it must sit below all of them."""
    assert all(level == 0 for level, _, _ in imports_of(ROOT / "errors.py"))


def test_model_core_is_split_from_training_and_cli():
    """A newcomer finds the model core, training and the command line in their own folders."""
    core = {p.stem for p in (ROOT / "stylemamba").glob("*.py")}
    assert {"config", "model", "checkpoint", "encoders", "style", "stylize"} <= core
    assert not core & {"losses", "fit", "train", "metrics", "vgg", "taesd", "clipstyler"}
    assert not any(name.startswith("cli") for name in core)
    assert {p.stem for p in (ROOT / "stylemamba" / "training").glob("*.py")} >= {"losses", "fit", "train", "metrics"}


def test_nodes_import_comfy_only_lazily():
    for path in package_files("nodes"):
        tree = ast.parse(path.read_text())
        for node in tree.body:  # module level only
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                names = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
                for name in names:
                    assert name.split(".")[0] not in COMFY_MODULES or getattr(node, "level", 0) > 0, f"nodes/{path.name} imports {name} at module level"


def test_internal_imports_are_relative():
    for package in ("nodes", "stylemamba", "stylestudio", "vct", "kernels"):
        for path in package_files(package):
            for level, module, line in imports_of(path):
                assert not (level == 0 and module.startswith("comfyui_stylemamba")), f"{package}/{path.name}:{line}"


def test_only_one_import_name_is_installed():
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    assert config["package-dir"] == {"comfyui_stylemamba": "."}
    assert all(p == "comfyui_stylemamba" or p.startswith("comfyui_stylemamba.") for p in config["packages"])
    on_disk = {".".join(p.parent.relative_to(ROOT).parts) for p in ROOT.rglob("*/__init__.py")
               if p.parent.parts[len(ROOT.parts)] not in ("tests", "benchmarks", "build")
               and not p.parent.parts[len(ROOT.parts)].startswith(".")}  # .venv, .cache (the ComfyUI tier's)
    listed = {p.split(".", 1)[1] for p in config["packages"] if "." in p}
    assert on_disk == listed, "every sub-package must be listed in pyproject.toml (and no other)"


def test_requirements_never_pin_torch():
    for name in ("requirements.txt",):
        lines = [l.split("#")[0].strip().lower() for l in (ROOT / name).read_text().splitlines()]
        assert not any(l.startswith(("torch", "torchvision", "torchaudio")) for l in lines)
    dependencies = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    assert not any(d.lower().startswith("torch") for d in dependencies)


def test_root_init_only_exports_mappings():
    tree = ast.parse((ROOT / "__init__.py").read_text())
    assigned = {t.id for n in tree.body if isinstance(n, ast.Assign) for t in n.targets if isinstance(t, ast.Name)}
    assert assigned <= {"__all__", "WEB_DIRECTORY"}
