"""The persistent compilation cache (:mod:`jaxfair.compile_cache`): where it lives, how it is turned off, and that a
program loaded from it computes exactly what the compiled one did. (The kill-and-resume tests run their resumed
``jaxfair train`` against the cache their reference run filled, and check byte-identical outputs.)"""

import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxfair import compile_cache
from jaxfair.cli import main


@pytest.mark.parametrize("value", ["off", "0", "OFF", "false"])
def test_the_environment_variable_turns_it_off(monkeypatch, value):
    monkeypatch.setenv("JAXFAIR_COMPILE_CACHE", value)
    assert compile_cache.cache_folder() is None
    before = jax.config.jax_compilation_cache_dir
    assert compile_cache.enable_compile_cache() is None
    assert jax.config.jax_compilation_cache_dir == before


def test_by_default_it_lives_beside_the_data_cache(monkeypatch, tmp_path):
    monkeypatch.delenv("JAXFAIR_COMPILE_CACHE")
    monkeypatch.setenv("JAXFAIR_DATA", str(tmp_path / "data"))
    assert compile_cache.cache_folder() == tmp_path / "data" / "xla"


def test_a_folder_that_cannot_be_made_leaves_the_cache_as_it_was(tmp_path, shared_compile_cache):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    assert compile_cache.enable_compile_cache(blocker / "xla") is None
    assert pathlib.Path(jax.config.jax_compilation_cache_dir) == shared_compile_cache


def test_a_program_is_written_once_and_loaded_with_the_same_result(shared_compile_cache):
    def program(x):  # a program no other test compiles
        return jnp.cumsum(jnp.sin(x) * 3.0 + jnp.arange(x.shape[0]) ** 0.5) / 7.0

    events = []
    listener = lambda name, **kwargs: events.append(name)  # noqa: E731
    jax.monitoring.register_event_listener(listener)
    try:
        x = jnp.linspace(-2.0, 2.0, 4099)
        before = set(shared_compile_cache.rglob("*"))
        compiled = np.asarray(jax.jit(program)(x))
        assert set(shared_compile_cache.rglob("*")) - before, "the first compilation wrote nothing to the cache"
        hits = events.count("/jax/compilation_cache/cache_hits")
        jax.clear_caches()  # forget the in-memory executable: the next call must come from the folder
        loaded = np.asarray(jax.jit(program)(x))
    finally:
        jax.monitoring.unregister_event_listener(listener)
    assert events.count("/jax/compilation_cache/cache_hits") > hits
    assert loaded.tobytes() == compiled.tobytes()


def test_the_commands_that_compile_turn_it_on_and_programs_land_in_the_new_folder(monkeypatch, tmp_path,
                                                                                   shared_compile_cache):
    folder = tmp_path / "cli-cache"
    monkeypatch.setenv("JAXFAIR_COMPILE_CACHE", str(folder))
    try:
        assert main(["methods"]) == 0
        assert not folder.exists()  # listing methods compiles nothing
        assert main(["probe", str(tmp_path / "missing.npy"), str(tmp_path / "users.csv")]) == 2
        assert folder.is_dir() and pathlib.Path(jax.config.jax_compilation_cache_dir) == folder
        jax.jit(lambda x: jnp.tanh(x) * 5.0 - 1.0)(jnp.arange(17.0)).block_until_ready()
        assert list(folder.iterdir()), "the program went to the folder JAX opened first, not the new one"
    finally:
        compile_cache.enable_compile_cache(shared_compile_cache)


def test_a_folder_the_caller_gave_jax_is_kept(monkeypatch, shared_compile_cache):
    monkeypatch.delenv("JAXFAIR_COMPILE_CACHE")
    assert compile_cache.enable_compile_cache() == shared_compile_cache  # jaxfair.harness.sweep from Python
