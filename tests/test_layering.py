"""The package's layers: the method (`mlem_jax`), the diffusion application on top of
it, then the CLI; the benchmark harness lives outside the package, in `benchmarks/`.
Each imports only from its own layer and the ones below, no module imports itself
through a cycle, and `import mlem_jax` loads the method alone."""

import ast
import pathlib
import subprocess
import sys

import pytest

PACKAGE = pathlib.Path(__file__).resolve().parents[1] / "mlem_jax"

# Highest layer first; a module not named here belongs to the method (layer 0).
LAYERS = {
    "mlem_jax.cli": 2,
    "mlem_jax.__main__": 2,
    "mlem_jax.data": 1,
    "mlem_jax.nn": 1,
    "mlem_jax.diffusion": 1,
    "mlem_jax.training": 1,
    "mlem_jax.pretrained": 1,
}
LAYER_NAMES = ("method", "application", "CLI")


def _layer(module: str) -> int:
    for prefix, layer in LAYERS.items():
        if module == prefix or module.startswith(prefix + "."):
            return layer
    return 0


def _module_name(path: pathlib.Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _is_type_checking(node: ast.AST) -> bool:
    test = getattr(node, "test", None)
    return isinstance(node, ast.If) and (
        (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING")
        or (isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")
    )


def _imports(path: pathlib.Path, modules: set[str]) -> set[str]:
    """Every `mlem_jax` module that `path` imports, at module level or inside a
    function (imports only for the type checker excluded), resolved to a module."""
    name = _module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()

    def resolve(target: str) -> str | None:
        while target and target not in modules:
            target = target.rpartition(".")[0]
        return target or None

    def visit(node: ast.AST) -> None:
        if _is_type_checking(node):
            return
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.split(".")[0] == "mlem_jax":
                for alias in node.names:  # a submodule, or a name in `target`
                    found.add(resolve(f"{target}.{alias.name}"))
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] == "mlem_jax":
                    found.add(resolve(alias.name))
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(ast.parse(path.read_text()))
    found.discard(None)  # type: ignore[arg-type]
    found.discard(name)
    return found  # type: ignore[return-value]


def _graph() -> dict[str, set[str]]:
    files = sorted(PACKAGE.rglob("*.py"))
    modules = {_module_name(f) for f in files}
    return {_module_name(f): _imports(f, modules) for f in files}


def test_every_import_runs_downward():
    upward = [
        f"{module} ({LAYER_NAMES[_layer(module)]}) imports {dep} "
        f"({LAYER_NAMES[_layer(dep)]})"
        for module, deps in _graph().items()
        for dep in sorted(deps)
        if _layer(dep) > _layer(module)
    ]
    assert not upward, "imports from a higher layer:\n" + "\n".join(upward)


def test_no_import_cycle():
    graph = _graph()
    # A package's `__init__` re-exporting its own submodules is not a cycle.
    edges = {
        m: {d for d in deps if not m.startswith(d + ".") and not d.startswith(m + ".")}
        for m, deps in graph.items()
    }
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(module: str) -> None:
        state[module] = 1
        stack.append(module)
        for dep in sorted(edges.get(module, ())):
            if state.get(dep) == 1:
                cycle = stack[stack.index(dep) :] + [dep]
                pytest.fail("import cycle: " + " -> ".join(cycle))
            if dep not in state:
                visit(dep)
        stack.pop()
        state[module] = 2

    for module in sorted(edges):
        if module not in state:
            visit(module)


def test_the_benchmark_harness_is_not_installed():
    assert not (PACKAGE / "benchmarking.py").exists()
    assert (PACKAGE.parent / "benchmarks" / "_harness.py").exists()


def test_graph_sees_known_imports():
    # The checks above mean something only if the parser finds real imports.
    graph = _graph()
    assert "mlem_jax._step" in graph["mlem_jax._solve"]
    assert "mlem_jax.nn" in graph["mlem_jax.training"]
    assert "mlem_jax.pretrained" in graph["mlem_jax.cli._common"]
    assert _layer("mlem_jax.diffusion._samplers") == 1
    # A higher layer importing a lower one is fine; the reverse would be flagged.
    assert _layer("mlem_jax.cli._sample") > _layer("mlem_jax.diffusion") > 0


def test_import_mlem_jax_loads_the_method_only():
    code = (
        "import sys, mlem_jax\n"
        "heavy = ('mlem_jax.diffusion', 'mlem_jax.nn', 'mlem_jax.training', "
        "'mlem_jax.data', 'mlem_jax.pretrained', "
        "'mlem_jax.cli', 'PIL', 'optax', 'matplotlib', 'sklearn')\n"
        "print(','.join(m for m in heavy if m in sys.modules))\n"
        "mlem_jax.diffusion.VPSDE\n"  # still reachable, loaded on first access
        "print('diffusion' in dir(mlem_jax), 'mlem_jax.diffusion' in sys.modules)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.splitlines()
    assert out[0] == "", f"`import mlem_jax` loaded {out[0]}"
    assert out[1] == "True True"


# Modules tested through other files, not a mirrored test file of their own.
TESTED_ELSEWHERE = {
    # `python -m mlem_jax` only calls the CLI's `main`, which every CLI test runs.
    "mlem_jax.__main__": "test_cli_main.py",
    # One small subpackage, one file: the UNet and the ladder built from it.
    "mlem_jax.nn._unet": "test_nn.py",
    "mlem_jax.nn._ladder": "test_nn.py",
    # test_levels.py is mlem_jax._levels'; the ladder as `Levels` is tested beside
    # reverse sampling.
    "mlem_jax.diffusion._levels": "test_diffusion.py",
    # The float16 packing of the shipped ladders, checked on the ladders it packed.
    "mlem_jax.pretrained.pack": "test_pretrained.py",
    # The calibration, by concept: the record, the pricing of a schedule and the
    # choice of one, all exercised through `calibrate`'s results.
    "mlem_jax._calibration": "test_calibrate.py",
    "mlem_jax._pricing": "test_calibrate.py",
    "mlem_jax._optimise": "test_calibrate.py",
    # The CLI's shared parts, run by the commands that use them.
    "mlem_jax.cli._common": "test_cli_errors.py",
    "mlem_jax.cli._solves": "test_cli_sample.py",
    "mlem_jax.cli._images": "test_cli_sample.py",
    "mlem_jax.cli._demo_report": "test_cli_demo.py",
    # Only its refusals are tested here; what it runs, `distill_ladder`, is tested
    # in test_training.py.
    "mlem_jax.cli._distill": "test_cli_errors.py",
}


def _mirrors(module: str) -> list[str]:
    """The test files that would mirror `module`: `mlem_jax._x` and `mlem_jax.x` →
    test_x.py; `mlem_jax.p._x` → test_x.py (unless `mlem_jax._x` or `mlem_jax.x`
    takes that name) or test_p_x.py; a subpackage `mlem_jax.p` → test_p.py or
    test_p_*.py."""
    parts = module.split(".")[1:]
    if len(parts) == 1:  # a subpackage's __init__ or a top-level module
        name = parts[0].strip("_")
        if (PACKAGE / parts[0]).is_dir():
            return [f"test_{name}.py", f"test_{name}_*.py"]
        return [f"test_{name}.py"]
    package, name = parts[0], parts[-1].strip("_")
    taken = any((PACKAGE / f"{p}{name}.py").exists() for p in ("", "_"))
    return ([] if taken else [f"test_{name}.py"]) + [f"test_{package}_{name}.py"]


def test_every_module_has_a_mirrored_test_file():
    tests = pathlib.Path(__file__).resolve().parent
    modules = sorted(_graph())
    missing = [
        f"{m} (expected {' or '.join(_mirrors(m))})"
        for m in modules
        if m != "mlem_jax"  # the public namespace: re-exports only
        and m not in TESTED_ELSEWHERE
        and not any(any(tests.glob(pattern)) for pattern in _mirrors(m))
    ]
    assert not missing, "modules without a mirrored test file:\n" + "\n".join(missing)
    # The list stays honest: each entry is a module that exists and has no mirror of
    # its own, and the file said to test it exists.
    for module, test_file in TESTED_ELSEWHERE.items():
        assert module in modules, f"{module} no longer exists"
        mirrors = [p for p in _mirrors(module) if any(tests.glob(p))]
        assert not mirrors, f"{module} has {mirrors}: drop it from TESTED_ELSEWHERE"
        assert (tests / test_file).exists(), f"{test_file} (for {module}) is missing"
