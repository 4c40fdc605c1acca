"""The package layout's rules: pure cores import no Beam, no module imports itself back, imports
sit at the top of modules (one documented exception)."""
import ast
import pathlib
import subprocess
import sys

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
SOURCE_DIRS = ("pipelines", "transforms", "schemas")
# Beam-free by contract: the numeric cores, event handling, array helpers and the method strategies.
# (transforms/storage may use Beam's FileSystems, the IO layer, but builds no pipeline.)
PURE_PACKAGES = ("inference", "events", "arrays", "methods")
# Imports kept inside functions: the CLI's of the commands that run pipelines, so `labelbeam --help` does
# not import apache_beam.
LAZY_IMPORTS_ALLOWED = {("labelbeam.pipelines.cli", "labelbeam.pipelines.build"),
                        ("labelbeam.pipelines.cli", "labelbeam.pipelines.rebuild"),
                        ("labelbeam.pipelines.cli", "labelbeam.pipelines.ingest")}


def module_name(path: pathlib.Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    parts = parts[:-1] if parts[-1] == "__init__" else parts
    return "labelbeam." + ".".join(parts)


MODULES = {module_name(path): path for directory in SOURCE_DIRS for path in (REPO / directory).rglob("*.py")}


def imported_modules(path: pathlib.Path, top_level_only: bool = False) -> set[str]:
    """labelbeam modules a module imports (at any depth of its code unless top_level_only)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    nodes = tree.body if top_level_only else list(ast.walk(tree))
    found = set()
    for node in nodes:
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            for alias in node.names:  # `from package import module` imports the module
                submodule = f"{node.module}.{alias.name}"
                found.add(submodule if submodule in MODULES else node.module)
    return {name for name in found if name in MODULES}


def test_the_layout_was_found():
    assert "labelbeam.transforms.inference.dawid_skene" in MODULES
    assert "labelbeam.transforms.consensus" in MODULES


@pytest.mark.parametrize("package", PURE_PACKAGES)
def test_pure_packages_do_not_import_apache_beam(package):
    modules = sorted(name for name in MODULES if name.startswith(f"labelbeam.transforms.{package}."))
    assert modules
    program = "import sys\n" + "".join(f"import {name}\n" for name in modules) + \
        "print('apache_beam' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "False", f"importing {package} loads apache_beam"


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Every cycle a depth-first walk of the import graph meets, as [a, b, ..., a]."""
    visiting, done, cycles = set(), set(), []

    def visit(node, trail):
        visiting.add(node)
        for dep in sorted(graph[node]):
            if dep in visiting:
                cycles.append(trail[trail.index(dep):] + [dep])
            elif dep not in done:
                visit(dep, trail + [dep])
        visiting.discard(node)
        done.add(node)

    for name in sorted(graph):
        if name not in done:
            visit(name, [name])
    return cycles


def test_the_cycle_finder_finds_a_cycle_and_only_cycles():
    assert find_cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == [["a", "b", "c", "a"]]
    assert find_cycles({"a": {"b", "c"}, "b": {"c"}, "c": set()}) == []


def test_no_import_cycles_counting_imports_inside_functions():
    graph = {name: imported_modules(path) - {name} for name, path in MODULES.items()}
    # Importing a module imports its package's __init__ first: that is not a cycle of ours.
    graph = {name: {dep for dep in deps if not name.startswith(dep + ".")} for name, deps in graph.items()}
    assert find_cycles(graph) == []


def test_imports_sit_at_the_top_of_modules():
    lazy = {(name, dep) for name, path in MODULES.items()
            for dep in imported_modules(path) - imported_modules(path, top_level_only=True)}
    assert lazy == LAZY_IMPORTS_ALLOWED
