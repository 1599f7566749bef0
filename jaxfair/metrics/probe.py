"""Attribute probes ("attackers"): how much a frozen user embedding reveals about a sensitive attribute.

For each attribute a fresh classifier is trained on the embeddings of the probe training users, its weight decay
and training length are chosen on the probe validation users only, and the chosen model is scored once on the probe
test users. Lower test AUC (towards 0.5) means a fairer representation.

Every weight decay in the grid trains in one ``vmap``-ed, jitted run, with the parameters and validation
probabilities stored every ``eval_every`` steps. The trainer is cached per static configuration and jit caches per
shape, so probing many embedding sets of the same shape compiles once.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxfair.metrics.auc import batched_multiclass_auc, multiclass_auc, resampled_auc


@dataclasses.dataclass(frozen=True)
class ProbeConfig:
    """Probe classifier and selection settings.

    Attributes:
      hidden: 0 for multinomial logistic regression (the default, the standard linear probe); ``> 0`` for one
        hidden ReLU layer of that width.
      weight_decays: grid of L2 penalties ``wd / 2 * ||W||^2`` on the weight matrices (not the biases).
      steps: full-batch Adam steps; must be a multiple of ``eval_every``.
      eval_every: validation AUC is recorded (and the parameters kept) every this many steps.
      learning_rate: Adam learning rate.
      bootstrap: resamples of the test users for the confidence interval; 0 disables it.
      ci: confidence level of the percentile bootstrap interval.
      audit_repeats: the fewest times :func:`cross_fitted_probe` (the unseen-user audit) draws its folds afresh; it
        reports the mean AUC over the draws and their spread.
      audit_se: it keeps drawing until the standard error of that mean (spread / sqrt(draws)) is at most this ...
      audit_max_repeats: ... or this many draws were made (it wins over ``audit_repeats`` when smaller). One draw's AUC moves by about 0.02 with the fold seed on
        the few hundred unseen users of MovieLens-100k, so the default target takes about 45 draws there and the
        mean then moves by well under 0.01 between master seeds (``tests/test_probe.py``, ``docs/protocol.md``).
    """

    hidden: int = 0
    weight_decays: tuple[float, ...] = (1e-4, 1e-3, 1e-2, 1e-1)
    steps: int = 300
    eval_every: int = 25
    learning_rate: float = 1e-2
    bootstrap: int = 1000
    ci: float = 0.95
    audit_repeats: int = 5
    audit_se: float = 0.0025
    audit_max_repeats: int = 100

    def __post_init__(self):
        if self.hidden < 0 or not self.weight_decays or self.eval_every < 1 or self.steps < self.eval_every:
            raise ValueError(f"invalid probe config {self}")
        if self.steps % self.eval_every:
            raise ValueError(f"steps ({self.steps}) must be a multiple of eval_every ({self.eval_every})")
        if not 0.0 < self.ci < 1.0 or self.bootstrap < 0:
            raise ValueError(f"invalid bootstrap settings: bootstrap={self.bootstrap}, ci={self.ci}")
        if self.audit_repeats < 1 or self.audit_max_repeats < 1:
            raise ValueError(f"audit_repeats and audit_max_repeats must be at least 1, got {self.audit_repeats} and "
                             f"{self.audit_max_repeats}")
        if self.audit_se < 0:
            raise ValueError(f"audit_se must be non-negative, got {self.audit_se}")


def _logits(params: dict, x: jax.Array) -> jax.Array:
    """``(n, d) -> (n, C)``; a hidden layer is present when ``params`` has ``w1``."""
    if "w1" in params:
        x = jax.nn.relu(x @ params["w1"] + params["b1"])
        return x @ params["w2"] + params["b2"]
    return x @ params["w"] + params["b"]


@jax.jit
def _predict(params: dict, x: jax.Array) -> jax.Array:
    return jax.nn.softmax(_logits(params, x), axis=-1)


@functools.lru_cache(maxsize=None)
def _build_trainer(num_classes: int, hidden: int, steps: int, eval_every: int, learning_rate: float):
    """Jitted ``train(x, y, x_valid, weight_decays (W,), key) -> (checkpoints, valid_proba)``.

    Returns per grid member ``w`` and checkpoint ``e`` (after ``(e + 1) * eval_every`` steps): parameter leaves with
    leading axes ``(W, E)`` and validation probabilities ``(W, E, n_valid, C)``.
    """
    tx = optax.adam(learning_rate)

    def init(key, dim):
        if hidden == 0:  # convex problem: zero init is deterministic and fine
            return {"w": jnp.zeros((dim, num_classes)), "b": jnp.zeros(num_classes)}
        k1, k2 = jax.random.split(key)
        return {
            "w1": jax.random.normal(k1, (dim, hidden)) * jnp.sqrt(2.0 / dim),
            "b1": jnp.zeros(hidden),
            "w2": jax.random.normal(k2, (hidden, num_classes)) * jnp.sqrt(1.0 / hidden),
            "b2": jnp.zeros(num_classes),
        }

    def loss(params, x, y, wd):
        ce = optax.softmax_cross_entropy_with_integer_labels(_logits(params, x), y).mean()
        l2 = sum(jnp.sum(v**2) for k, v in params.items() if k.startswith("w"))
        return ce + 0.5 * wd * l2

    def train_one(x, y, x_valid, wd, key):
        def step(carry, _):
            params, opt_state = carry
            grads = jax.grad(loss)(params, x, y, wd)
            updates, opt_state = tx.update(grads, opt_state, params)
            return (optax.apply_updates(params, updates), opt_state), None

        def segment(carry, _):
            carry, _ = jax.lax.scan(step, carry, None, length=eval_every)
            return carry, (carry[0], _predict(carry[0], x_valid))

        params = init(key, x.shape[1])
        _, (checkpoints, valid_proba) = jax.lax.scan(
            segment, (params, tx.init(params)), None, length=steps // eval_every
        )
        return checkpoints, valid_proba

    # Same data and initialisation for every grid member; only the weight decay differs.
    return jax.jit(jax.vmap(train_one, in_axes=(None, None, None, 0, None)))


def _seed_from_key(key: jax.Array) -> int:
    """A numpy seed drawn from a JAX key (typed or raw), so bootstrap resampling is reproducible from the key."""
    return int(jax.random.randint(jax.random.fold_in(key, 1), (), 0, np.iinfo(np.int32).max))


def _bootstrap_ci(y: np.ndarray, proba: np.ndarray, key: jax.Array, config: ProbeConfig) -> list[float] | None:
    """Percentile bootstrap interval of the AUC of ``proba (n, C)`` against ``y (n,)`` over ``config.bootstrap``
    resamples of the ``n`` users (drawn from ``key``); None without resamples or users."""
    if not config.bootstrap or not len(y):
        return None
    return _percentile_interval(resampled_auc(y, proba, _bootstrap_counts(len(y), key, config)), config)


def _bootstrap_counts(n: int, key: jax.Array, config: ProbeConfig) -> np.ndarray:
    """``(config.bootstrap, n)`` multinomial multiplicities of ``n`` users, drawn from ``key``."""
    rng = np.random.default_rng(_seed_from_key(key))
    return rng.multinomial(n, np.full(n, 1.0 / n), size=config.bootstrap)


def _percentile_interval(replicates: np.ndarray, config: ProbeConfig) -> list[float] | None:
    """The ``config.ci`` percentile interval of bootstrap replicates (NaN ones dropped); None when none is left."""
    replicates = replicates[~np.isnan(replicates)]
    if not replicates.size:
        return None
    tail = (1.0 - config.ci) / 2.0
    return [float(v) for v in np.quantile(replicates, [tail, 1.0 - tail])]


def probe_attribute(
    embeddings: np.ndarray,
    labels: np.ndarray,
    probe_users: dict[str, np.ndarray],
    num_classes: int,
    key: jax.Array,
    config: ProbeConfig = ProbeConfig(),
    *,
    return_test_proba: bool = False,
) -> dict:
    """Train, select and test one attribute probe on frozen embeddings.

    Features are standardised with the mean and standard deviation of the training users (a constant feature is
    left centred). The checkpoint ``(weight decay, step)`` with the highest validation AUC is kept (earliest step,
    then smallest weight decay, on ties; the final step of the first weight decay if validation AUC is undefined
    everywhere); test users play no part in the choice.

    Args:
      embeddings: float ``(U, d)`` frozen user representations.
      labels: int ``(U,)`` attribute class per user, in ``[0, num_classes)``.
      probe_users: ``"train"``/``"valid"``/``"test"`` -> int user indices.
      num_classes: ``C >= 2``.
      key: JAX PRNG key (hidden-layer initialisation and bootstrap resampling).
      config: probe settings.
      return_test_proba: also return ``test_proba``, float ``(n_test, C)`` class probabilities of the probe test
        users (in ``probe_users["test"]`` order), e.g. for per-user attacker losses.

    Returns:
      ``auc`` (test AUC, :func:`~jaxfair.metrics.auc.multiclass_auc` of probabilities), ``auc_ci`` (``[low, high]``
      percentile bootstrap interval over test users, or ``None`` when ``config.bootstrap == 0``), ``valid_auc`` (of
      the chosen checkpoint), ``weight_decay``, ``step``, ``num_test`` and ``majority_rate`` (share of the most
      frequent class among the test users: the accuracy of always guessing it).
    """
    if num_classes < 2:
        raise ValueError(f"num_classes must be at least 2, got {num_classes}")
    x = np.asarray(embeddings, dtype=np.float32)
    y = np.asarray(labels).astype(np.int32)
    if y.size and (y.min() < 0 or y.max() >= num_classes):
        raise ValueError(f"labels must lie in [0, {num_classes})")
    train, valid, test = (np.asarray(probe_users[s]) for s in ("train", "valid", "test"))

    mean = x[train].mean(axis=0)
    std = x[train].std(axis=0)
    std = np.where(std > 0, std, 1.0)

    def standardize(users):
        return (x[users] - mean) / std

    trainer = _build_trainer(
        num_classes, config.hidden, config.steps, config.eval_every, float(config.learning_rate)
    )
    wds = np.asarray(config.weight_decays, dtype=np.float32)
    checkpoints, valid_proba = trainer(standardize(train), y[train], standardize(valid), wds, key)
    valid_proba = np.asarray(valid_proba)
    num_wd, num_ckpt = valid_proba.shape[:2]

    # valid_auc[e, w]: flattening step-major makes argmax prefer the earliest step, then the smallest decay.
    valid_auc = batched_multiclass_auc(y[valid], valid_proba).T
    if np.isnan(valid_auc).all():
        best_e, best_w = num_ckpt - 1, 0
    else:
        best_e, best_w = np.unravel_index(np.nanargmax(valid_auc), valid_auc.shape)
    params = jax.tree.map(lambda leaf: leaf[best_w, best_e], checkpoints)

    test_proba = np.asarray(_predict(params, standardize(test)), dtype=np.float64)
    y_test = y[test]
    auc = multiclass_auc(y_test, test_proba)
    majority = np.bincount(y_test, minlength=num_classes).max() / len(test) if len(test) else np.nan

    auc_ci = _bootstrap_ci(y_test, test_proba, key, config)

    extra = {"test_proba": test_proba} if return_test_proba else {}
    return {
        **extra,
        "auc": auc,
        "auc_ci": auc_ci,
        "valid_auc": float(valid_auc[best_e, best_w]),
        "weight_decay": float(config.weight_decays[best_w]),
        "step": int((best_e + 1) * config.eval_every),
        "num_test": int(len(test)),
        "majority_rate": float(majority),
    }


def _cross_fit(x, y, users, num_classes, key, config, folds) -> tuple[np.ndarray, list[float]]:
    """One cross-fitting of ``users`` into ``folds`` parts drawn from ``key``: out-of-fold class probabilities
    ``(n, C)`` in the order of ``users`` and the per-fold AUCs."""
    rng = np.random.default_rng(_seed_from_key(jax.random.fold_in(key, 7)))
    # Stratified: the users, shuffled within each class and lined up class after class, are dealt round-robin over
    # the folds from a random fold onwards, so the folds' sizes differ by at most one and every fold holds each class
    # in about its overall share.
    lined = np.concatenate([rng.permutation(users[y[users] == c]) for c in np.unique(y[users])])
    fold_of = (int(rng.integers(folds)) + np.arange(len(lined))) % folds
    parts = [lined[fold_of == k] for k in range(folds)]
    position = {int(u): i for i, u in enumerate(users)}
    proba = np.zeros((len(users), num_classes))
    fold_auc = []
    for k in range(folds):
        valid_part = (k + 1) % folds
        train = np.concatenate([parts[j] for j in range(folds) if j not in (k, valid_part)])
        split = {"train": np.sort(train), "valid": np.sort(parts[valid_part]), "test": np.sort(parts[k])}
        result = probe_attribute(x, y, split, num_classes, jax.random.fold_in(key, k), config, return_test_proba=True)
        proba[[position[int(u)] for u in split["test"]]] = result["test_proba"]
        fold_auc.append(result["auc"])
    return proba, fold_auc


def cross_fitted_probe(
    embeddings: np.ndarray,
    labels: np.ndarray,
    users: np.ndarray,
    num_classes: int,
    key: jax.Array,
    config: ProbeConfig = ProbeConfig(),
    folds: int = 5,
) -> dict:
    """Leakage measured only on ``users`` (the unseen-user audit): repeated cross-fitted probes, pooled out-of-fold.

    One cross-fitting shuffles ``users`` into ``folds`` parts; for fold ``k`` a :func:`probe_attribute` is trained on
    the other parts except part ``k + 1`` (mod ``folds``), selected on part ``k + 1`` and scored on part ``k``; every
    user is scored once, by a probe that never saw them, and the AUC is computed over all of them together. That
    AUC depends on the draw of the folds (by about 0.02 on a few hundred users), so the audit repeats the
    cross-fitting, the ``r``-th time with folds drawn from ``fold_in(key, 10_000 + r)`` (the first from ``key``
    itself), at least ``config.audit_repeats`` times and until the standard error of the mean AUC is at most
    ``config.audit_se`` (or ``config.audit_max_repeats`` draws), and reports the mean AUC and its spread.

    Use it when the embeddings were trained with some users' attribute labels (an adversarial fairness method
    does): pass the users whose labels were withheld, and neither the probe's training users nor its test users
    were seen by the method. :func:`probe_attribute` on ``Split.probe_users`` instead fits the probe on the probe
    training users, whose labels such a method may have trained against, and a method that only scrambles *those*
    users' encoding then looks fair to it.

    Args:
      embeddings: float ``(U, d)``; labels: int ``(U,)``; users: int ``(n,)`` with ``n >= folds``;
      num_classes: ``C >= 2``; key: JAX PRNG key; config: probe settings; folds: ``>= 3``.

    Returns:
      ``auc`` (mean over the repeats of the pooled out-of-fold AUC), ``auc_std`` (their standard deviation, 0 for
      one repeat), ``auc_se`` (the standard error of the mean), ``repeat_auc`` (each repeat's), ``auc_ci`` (percentile bootstrap over ``users`` of the mean: each
      resample of users re-scores every repeat's out-of-fold probabilities; ``None`` without resamples),
      ``fold_auc`` (per fold of the first repeat), ``repeats`` and ``num_users``.
    """
    users = np.sort(np.asarray(users))
    if folds < 3 or len(users) < folds:
        raise ValueError(f"need folds >= 3 and at least `folds` users, got folds={folds} and {len(users)} users")
    x = np.asarray(embeddings, dtype=np.float32)
    y = np.asarray(labels).astype(np.int32)
    no_bootstrap = dataclasses.replace(config, bootstrap=0)
    y_users = y[users]
    probas, repeat_auc, fold_auc = [], [], None
    while len(probas) < config.audit_max_repeats:
        r = len(probas)
        proba, folds_r = _cross_fit(x, y, users, num_classes, key if r == 0 else jax.random.fold_in(key, 10_000 + r),
                                    no_bootstrap, folds)
        probas.append(proba)
        repeat_auc.append(multiclass_auc(y_users, proba))
        fold_auc = folds_r if fold_auc is None else fold_auc
        if len(probas) >= config.audit_repeats and _standard_error(repeat_auc) <= config.audit_se:
            break
    repeat_auc = np.asarray(repeat_auc)
    auc_ci = None
    if config.bootstrap:
        counts = _bootstrap_counts(len(users), key, config)
        auc_ci = _percentile_interval(np.mean([resampled_auc(y_users, p, counts) for p in probas], axis=0), config)
    return {"auc": float(np.mean(repeat_auc)),
            "auc_std": float(np.std(repeat_auc, ddof=1)) if len(repeat_auc) > 1 else 0.0,
            "auc_se": _standard_error(repeat_auc), "repeat_auc": [float(a) for a in repeat_auc], "auc_ci": auc_ci,
            "fold_auc": [float(a) for a in fold_auc], "repeats": len(repeat_auc), "num_users": int(len(users))}


def _standard_error(values) -> float:
    """Standard error of the mean of ``values`` (0 for one value; NaN values, from undefined AUCs, count as 0)."""
    values = np.nan_to_num(np.asarray(values, np.float64))
    return float(np.std(values, ddof=1) / np.sqrt(len(values))) if len(values) > 1 else 0.0


def probe_all(
    embeddings: np.ndarray,
    user_attributes: dict[str, np.ndarray],
    attribute_classes: dict[str, tuple[str, ...]],
    probe_users: dict[str, np.ndarray],
    key: jax.Array,
    config: ProbeConfig = ProbeConfig(),
) -> dict[str, dict]:
    """:func:`probe_attribute` for every attribute, with key ``fold_in(key, i)`` for the ``i``-th attribute.

    Args:
      embeddings: float ``(U, d)``.
      user_attributes: attribute name -> int ``(U,)`` class indices (``Split.user_attributes``).
      attribute_classes: attribute name -> class labels; their count is ``C``.
      probe_users: ``Split.probe_users``.
      key: JAX PRNG key.
      config: probe settings.

    Returns:
      Attribute name -> the result dict of :func:`probe_attribute`.
    """
    return {
        name: probe_attribute(
            embeddings, labels, probe_users, len(attribute_classes[name]), jax.random.fold_in(key, i), config
        )
        for i, (name, labels) in enumerate(user_attributes.items())
    }
