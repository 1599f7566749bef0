"""The persistent XLA compilation cache: a second run of any config loads its compiled programs from disk instead of
compiling them again.

The ``jaxfair`` command and the sweep harness (:func:`jaxfair.harness.sweep`) turn it on before they build anything.
Its folder is ``$JAXFAIR_COMPILE_CACHE`` when that is set, else ``xla/`` inside the dataset cache
(:func:`jaxfair.data.fetch.cache_dir`, ``~/.cache/jaxfair`` by default); ``JAXFAIR_COMPILE_CACHE=off`` turns it off.
A cached program is the same executable the compiler would have produced, so results do not change (tested in
``tests/test_compile_cache.py``). Every program is cached however quickly it compiled: on a CPU most of ours take
under a second each, but there are many. The folder is not trimmed (JAX's size bound needs the ``filelock``
package, which jaxfair does not depend on); deleting it at any time only costs the next run its compilations.
JAX writes an entry in place, so a process killed while writing one can leave it truncated: JAX then warns that it
could not read the entry and compiles instead, on every run until the folder is deleted. Keep the folder on the machine
it was filled on (the default, under the home folder); a folder shared between machines of different CPU types is not
tested.
"""

from __future__ import annotations

import os
import pathlib

OFF = ("off", "0", "false", "no", "none")


def cache_folder() -> pathlib.Path | None:
    """Where compiled programs are kept, or ``None`` when ``$JAXFAIR_COMPILE_CACHE`` turns the cache off."""
    env = os.environ.get("JAXFAIR_COMPILE_CACHE", "").strip()
    if env.lower() in OFF and env:
        return None
    if env:
        return pathlib.Path(env).expanduser()
    from jaxfair.data.fetch import cache_dir

    return cache_dir() / "xla"


def enable_compile_cache(folder: str | os.PathLike | None = None) -> pathlib.Path | None:
    """Point JAX's persistent compilation cache at ``folder`` (default :func:`cache_folder`); returns the folder in
    use, or ``None`` when the cache is off or its folder cannot be created (then nothing changes: a run compiles as
    it would without a cache).

    Without ``folder`` and without ``$JAXFAIR_COMPILE_CACHE``, a cache folder the caller already gave JAX is kept as
    it is. JAX opens its cache once per process, so a change of folder also resets JAX's handle on the old one.
    """
    import jax

    current = jax.config.jax_compilation_cache_dir
    if folder is None and current and not os.environ.get("JAXFAIR_COMPILE_CACHE", "").strip():
        return pathlib.Path(current)
    path = pathlib.Path(folder).expanduser() if folder is not None else cache_folder()
    if path is None:
        return None
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError:
        return None
    if not os.access(path, os.W_OK):
        return None
    if current != str(path):
        jax.config.update("jax_compilation_cache_dir", str(path))
        _reopen()
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    return path


def restore_compile_cache(folder: str | None) -> None:
    """Point JAX's persistent cache back at ``folder`` (a value of ``jax.config.jax_compilation_cache_dir`` saved
    before :func:`enable_compile_cache` moved it; None turns it off), so nothing keeps writing into a folder that is
    about to be deleted (a benchmark's scratch cache)."""
    import jax

    if jax.config.jax_compilation_cache_dir != folder:
        jax.config.update("jax_compilation_cache_dir", folder)
        _reopen()


def _reopen() -> None:
    """Make JAX open the cache folder now configured (it opens one per process, at its first compilation)."""
    try:
        from jax._src import compilation_cache
    except ImportError:  # a JAX without this module: the folder applies from the next process on
        return
    reset = getattr(compilation_cache, "reset_cache", None)
    if reset is not None:
        reset()


class CompileCount:
    """How many XLA programs each jitted function built while it was open: a context manager over JAX's
    ``/jax/core/compile/backend_compile_duration`` monitoring event, which fires once per program whether it was
    compiled or loaded from the persistent cache, so the count is the same with a cold or a warm cache.

    ``with CompileCount() as count: ...`` then ``count.by_function`` (function name -> programs) and ``count.total``.
    A function that compiles more often than its distinct input shapes is rebuilding its program (a jitted closure
    defined inside a loop, or shapes that drift); ``tests/test_compile_count.py`` holds the pipeline to a budget.
    """

    EVENT = "/jax/core/compile/backend_compile_duration"
    _open: list["CompileCount"] = []
    _registered = False

    def __init__(self):
        self.by_function: dict[str, int] = {}

    @property
    def total(self) -> int:
        return sum(self.by_function.values())

    @classmethod
    def _listen(cls, event: str, duration: float, **kwargs) -> None:
        if event != cls.EVENT:
            return
        name = str(kwargs.get("fun_name", "?"))
        for count in cls._open:
            count.by_function[name] = count.by_function.get(name, 0) + 1

    def __enter__(self) -> "CompileCount":
        if not CompileCount._registered:
            from jax import monitoring

            monitoring.register_event_duration_secs_listener(CompileCount._listen)
            CompileCount._registered = True
        CompileCount._open.append(self)
        return self

    def __exit__(self, *exc) -> None:
        CompileCount._open.remove(self)
