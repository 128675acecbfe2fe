import jax
import pytest

# (n, 1) against (n,) silently broadcasts to (n, n): the classic linear
# regression bug. Strict mode turns any implicit rank promotion into an error.
jax.config.update("jax_numpy_rank_promotion", "raise")


@pytest.fixture(scope="session")
def seed_data():
    """The lesson's data set: 10 000 rows, y = 2 x0 - 3.4 x1 + 4.2 + 0.01 noise."""
    import jaxlr

    return jaxlr.synthetic_data(jax.random.key(0))


TRANSFORMS = [pytest.param(lambda f: f, id="eager"), pytest.param(jax.jit, id="jit")]
