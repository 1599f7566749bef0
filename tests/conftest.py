import os

import jax
import pytest

from jaxfair.compile_cache import enable_compile_cache

jax.config.update("jax_disable_most_optimizations", True)


@pytest.fixture(scope="session", autouse=True)
def shared_compile_cache(tmp_path_factory):
    """One persistent compilation cache for the session, in-process and for every ``jaxfair`` subprocess a test
    starts (they read ``$JAXFAIR_COMPILE_CACHE``), so a program compiled once is loaded after; never the user's own
    cache."""
    folder = tmp_path_factory.mktemp("xla-cache")
    os.environ["JAXFAIR_COMPILE_CACHE"] = str(folder)
    assert enable_compile_cache() == folder
    yield folder
