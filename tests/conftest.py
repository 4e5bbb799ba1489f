import os
import shutil
import tempfile

import jax
import pytest

_CACHE_ENV = "MLEM_JAX_TEST_COMPILATION_CACHE"


def pytest_configure(config):
    # pytest-xdist (`-n 2`): a file's tests on one worker, so that its module-scoped
    # fixtures (a trained network, a calibration, the sharded checks' subprocess) are
    # built once rather than once per worker. An explicit `--dist` is kept.
    args = config.invocation_params.args
    if getattr(config.option, "dist", "no") == "load" and not any(
        a == "-d" or a.startswith("--dist") for a in args
    ):
        config.option.dist = "loadfile"
    # One persistent compilation cache for the run, shared by pytest-xdist's workers
    # (they inherit the variable from the process that made the folder): a program
    # several tests compile (the same UNet's training step, the shipped ladder's
    # solves) is compiled once, not once per test and per worker. The folder is new
    # for every run and removed after it, so no result depends on an earlier run.
    if not os.environ.get(_CACHE_ENV):
        os.environ[_CACHE_ENV] = tempfile.mkdtemp(prefix="mlem-jax-tests-")
        config._mlem_jax_cache_owner = True
    jax.config.update("jax_compilation_cache_dir", os.environ[_CACHE_ENV])


# The test files that take longest (each over ~30 s of one core, mostly compiling):
# run first, so that under pytest-xdist the short files fill in around them instead
# of one worker finishing a long file alone at the end.
SLOW_FIRST = (
    "test_cli_distributed.py",
    "test_training.py",
    "test_cli_sample.py",
    "test_cli_budget.py",
    "test_cli_demo.py",
    "test_shard.py",
    "test_cli_errors.py",
    "test_pretrained.py",
    "test_diffusion.py",
)


def pytest_collection_modifyitems(config, items):
    def rank(item):
        name = item.path.name
        return SLOW_FIRST.index(name) if name in SLOW_FIRST else len(SLOW_FIRST)

    items.sort(key=rank)  # stable: each file's tests keep their order


def pytest_unconfigure(config):
    if getattr(config, "_mlem_jax_cache_owner", False):
        shutil.rmtree(os.environ.pop(_CACHE_ENV), ignore_errors=True)


@pytest.fixture
def strict_promotion():
    """Run the test with strict dtype promotion, catching silent upcasts."""
    with jax.numpy_dtype_promotion("strict"):
        yield


@pytest.fixture
def x64():
    """Run the test with 64-bit floats enabled (for finite differences)."""
    with jax.enable_x64(True):
        yield
