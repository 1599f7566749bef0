"""Serving a finished run: every user under their own fairness requirement and strength (or Cofair level) in one
jitted pass, and their top-K recommendations.

    jaxfair serve RUN_DIR --requests REQUESTS.csv --out recs.csv [--k 10]

``REQUESTS.csv`` has one row per user to serve: ``user`` (the row index of the run's ``users.csv``), then, per
attribute of the run (e.g. ``gender``, ``age``, ``occupation``), 1 where that attribute must not influence the
user's recommendations and 0 (or an absent column) where it may; optionally ``strength`` in ``[0, 1]`` (default 1)
for ``erasure`` and ``afrl`` / ``ffvae``, or ``level`` in ``0..T`` for ``cofair`` (required there). ``recs.csv``:
``user, raw_id, rank, item, item_raw_id, score``, the ``k`` best items each user has no known interaction with.

What the control means per method (:func:`fair_embeddings`):

* ``erasure``: ``u' = u - t W^+ P_mask W (u - mu)``, the user's mask and strength ``t``;
* ``afrl`` and ``ffvae`` (one model for every requirement): ``u*_none + t (u*_mask - u*_none)``, so ``t`` scales the
  correction the requirement makes to the same model's output under the empty requirement (``t = 1``: the model as
  trained; the paper has no strength);
* ``cofair``: the user's level (the mask is not used: Cofair protects the one attribute it was trained on);
* ``noop``: the backbone's embeddings.

``tests/test_serving.py`` checks that a mixed batch equals, row by row, the per-mask / per-level results, and the
command's output and its errors.
"""

from __future__ import annotations

import functools
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd

from jaxfair.metrics.masks import mask_rows
from jaxfair.pipeline.outputs import RunError, _atomic

STRENGTH_METHODS = ("erasure", "afrl", "ffvae")
SERVED = (*STRENGTH_METHODS, "cofair", "noop")


class ServeError(ValueError):
    """A request the run cannot serve (the message names the row or column at fault)."""


def fair_embeddings(restored, users, masks=None, strength=None, levels=None) -> jax.Array:
    """Fair embeddings of ``users`` (int ``(n,)`` rows of ``users.csv``) of a restored run
    (:func:`jaxfair.pipeline.restore_run`), each under its own control, in one jitted call (module docstring).

    Args:
      masks: bool ``(n, M)`` (erasure, afrl, ffvae); strength: ``(n,)`` in ``[0, 1]`` or None (1);
      levels: int ``(n,)`` (cofair).

    Returns:
      ``(n, d)``, to be scored with the frozen backbone's scorer.
    """
    name = restored.method.name
    if name not in SERVED:
        raise ServeError(f"method {name!r} has no per-user serving here (served: {', '.join(SERVED)})")
    users = np.asarray(users, np.int32)
    inputs = jnp.asarray(restored.context.frozen.user_vecs["test"])[users]
    n = len(users)
    if name == "noop":
        return inputs
    if name == "cofair":
        if levels is None:
            raise ServeError("cofair serves a level per user: give levels (the 'level' column)")
        return _serve_levels(restored, inputs, jnp.asarray(levels, jnp.int32))
    m = len(restored.split.attribute_names)
    masks = np.zeros((n, m), bool) if masks is None else np.asarray(masks, bool)
    strength = np.ones(n, np.float32) if strength is None else np.asarray(strength, np.float32)
    if masks.shape != (n, m) or strength.shape != (n,):
        raise ServeError(f"masks must be ({n}, {m}) and strength ({n},), got {masks.shape} and {strength.shape}")
    return _serve_masks(restored, inputs, jnp.asarray(masks), jnp.asarray(strength))


def _serve_masks(restored, inputs, masks, strength):
    method, data, params, config = restored.method, restored.data, restored.params, restored.config.method_config
    if method.name == "erasure":
        return method.serve(data, params, config, inputs, (masks, strength))
    return _requirement_strength(method.serve, data, params, config, inputs, masks, strength)


@functools.partial(jax.jit, static_argnums=(0, 3))
def _requirement_strength(serve, data, params, config, inputs, masks, strength):
    fair = serve(data, params, config, inputs, masks)
    base = serve(data, params, config, inputs, jnp.zeros_like(masks))
    return base + strength[:, None] * (fair - base)


def _serve_levels(restored, inputs, levels):
    config = restored.config.method_config
    if int(jnp.min(levels)) < 0 or int(jnp.max(levels)) > config.levels:
        raise ServeError(f"levels must be in 0..{config.levels}, got {int(jnp.min(levels))}..{int(jnp.max(levels))}")
    return _levels_jitted(restored.method.serve, restored.data, restored.params, config, inputs, levels)


@functools.partial(jax.jit, static_argnums=(0, 3))
def _levels_jitted(serve, data, params, config, inputs, levels):
    return serve(data, params, config, inputs, levels)


@functools.partial(jax.jit, static_argnames=("k",))
def _top_k(score, fair, item_vecs, known, *, k):
    scores = score(fair[:, None, :], item_vecs[None, :, :])
    return jax.lax.top_k(jnp.where(known, -jnp.inf, scores), k)


def recommend(restored, users, fair, k: int = 10, batch: int = 512) -> tuple[np.ndarray, np.ndarray]:
    """The ``k`` best items of each user in ``users`` by the frozen backbone's score of ``fair``, never one the user
    is known to have interacted with (train, validation or test). Returns ``(items (n, k), scores (n, k))``; batches
    of ``batch`` users (the last padded), so memory is ``batch x items``."""
    split, frozen = restored.split, restored.context.frozen
    if not 1 <= k <= split.num_items:
        raise ServeError(f"--k must be in 1..{split.num_items}, got {k}")
    known = split.known_positives()  # bool (U, I), or CSR sets above the memory rule (masks built per batch)
    users = np.asarray(users, np.int32)
    items, scores = [], []
    for start in range(0, len(users), batch):
        rows = users[start:start + batch]
        pad = batch - len(rows) if len(users) > batch else 0
        chunk = jnp.concatenate([fair[start:start + batch], jnp.zeros((pad, fair.shape[1]), fair.dtype)])
        mask = np.concatenate([mask_rows(known, rows), np.zeros((pad, split.num_items), bool)])
        top_scores, top_items = _top_k(frozen.score, chunk, frozen.item_vecs, jax.device_put(mask), k=k)
        items.append(np.asarray(top_items)[: len(rows)])
        scores.append(np.asarray(top_scores)[: len(rows)])
    return np.concatenate(items), np.concatenate(scores)


def read_requests(path, restored) -> dict:
    """Parse ``REQUESTS.csv`` (module docstring) against the run: ``users``, ``masks``, ``strength``, ``levels``."""
    path = pathlib.Path(path)
    if not path.is_file():
        raise ServeError(f"{path}: no such requests file")
    try:
        frame = pd.read_csv(path, dtype=str, keep_default_na=False)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as err:
        raise ServeError(f"{path}: not a readable CSV ({err})") from err
    split, name = restored.split, restored.method.name
    if "user" not in frame.columns:
        raise ServeError(f"{path}: needs a 'user' column (row indices of the run's users.csv)")
    users = pd.to_numeric(frame["user"], errors="coerce").to_numpy()
    bad = [i for i, u in enumerate(users) if not (np.isfinite(u) and u == int(u) and 0 <= u < split.num_users)]
    if bad:
        raise ServeError(f"{path}: row {bad[0] + 2}: user {frame['user'].iloc[bad[0]]} is not a row of users.csv "
                         f"(0..{split.num_users - 1})")
    out = {"users": users.astype(np.int32), "masks": None, "strength": None, "levels": None}
    attributes = [a for a in split.attribute_names if a in frame.columns]
    unknown = [c for c in frame.columns if c not in ("user", "strength", "level", *split.attribute_names)]
    if unknown:
        raise ServeError(f"{path}: unknown column(s) {unknown}; the run's attributes are "
                         f"{list(split.attribute_names)}, and 'strength' / 'level'")
    masks = np.zeros((len(frame), len(split.attribute_names)), bool)
    for column in attributes:
        values = frame[column].str.strip()
        if not values.isin(["0", "1"]).all():
            row = int(np.flatnonzero(~values.isin(["0", "1"]))[0])
            raise ServeError(f"{path}: row {row + 2}: {column} must be 0 or 1, got {values.iloc[row]!r}")
        masks[:, split.attribute_names.index(column)] = values.to_numpy() == "1"
    out["masks"] = masks
    if "strength" in frame.columns:
        if name not in STRENGTH_METHODS:
            raise ServeError(f"{path}: 'strength' is for {', '.join(STRENGTH_METHODS)}; this run is {name!r}")
        strength = pd.to_numeric(frame["strength"], errors="coerce").to_numpy(np.float64)
        if not np.all((strength >= 0) & (strength <= 1)):
            row = int(np.flatnonzero(~((strength >= 0) & (strength <= 1)))[0])
            raise ServeError(f"{path}: row {row + 2}: strength must be in [0, 1], got {frame['strength'].iloc[row]}")
        out["strength"] = strength.astype(np.float32)
    if "level" in frame.columns:
        if name != "cofair":
            raise ServeError(f"{path}: 'level' is for cofair; this run is {name!r}")
        levels = pd.to_numeric(frame["level"], errors="coerce").to_numpy()
        top = restored.config.method_config.levels
        bad = [i for i, v in enumerate(levels) if not (np.isfinite(v) and v == int(v) and 0 <= v <= top)]
        if bad:
            raise ServeError(f"{path}: row {bad[0] + 2}: level must be an integer in 0..{top}, got "
                             f"{frame['level'].iloc[bad[0]]}")
        out["levels"] = levels.astype(np.int32)
    return out


def serve_run(run_dir, requests, out, k: int = 10, log=print) -> pd.DataFrame:
    """``jaxfair serve``: restore the run, read the requests, write ``out`` (atomically) and return it."""
    from jaxfair.pipeline import restore_run

    restored = restore_run(run_dir)
    if restored.method.name not in SERVED:
        raise ServeError(f"{run_dir}: method {restored.method.name!r} has no per-user serving here (served: "
                         f"{', '.join(SERVED)})")
    request = read_requests(requests, restored)
    fair = fair_embeddings(restored, request["users"], request["masks"], request["strength"], request["levels"])
    items, scores = recommend(restored, request["users"], fair, k)
    split, users = restored.split, request["users"]
    frame = pd.DataFrame({
        "user": np.repeat(users, k), "raw_id": np.repeat(np.asarray(split.user_raw_ids)[users], k),
        "rank": np.tile(np.arange(1, k + 1), len(users)), "item": items.reshape(-1),
        "item_raw_id": np.asarray(split.item_raw_ids)[items.reshape(-1)], "score": scores.reshape(-1)})
    out = pathlib.Path(out)
    if out.parent and not out.parent.exists():
        raise RunError(f"{out.parent}: no such folder for --out")
    _atomic(out, lambda tmp: frame.to_csv(tmp, index=False))
    log(f"[serve] {len(users)} users x top {k} ({restored.method.name}) -> {out}")
    return frame
