import jax
import pytest


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
