"""Attribute probes ("attackers"): how much a frozen user embedding reveals about a sensitive attribute.

For each attribute a fresh classifier is trained on the embeddings of the probe training users, its weight decay
and training length are chosen on the probe validation users only, and the chosen model is scored once on the probe
test users. Lower test AUC (towards 0.5) means a fairer representation.

One jitted program fits many probe problems at once (:func:`_build_fitter`): every weight decay of the grid, and for
the unseen-user audit every fold of several draws of folds, with validation pair counts and test probabilities
recorded every ``eval_every`` steps; the host only standardises, pads and picks the checkpoint. Parts are padded to
fixed lengths (the audit's folds to its largest fold), so a run builds one program per class count and problem shape
(``tests/test_compile_count.py``). The audit's bootstrap runs on the device as matrix products
(:func:`~jaxfair.metrics.auc.mean_resampled_auc`).
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from jaxfair.metrics.auc import mean_resampled_auc, multiclass_auc, resampled_auc


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
      audit_batch: draws of folds fitted per call of the probe program (all their folds and weight decays at once);
        a speed setting only: results depend on it through float rounding alone.
      audit_hidden: 0 (default): the audit is the linear probe only. ``> 0``: the requirement methods (AFRL, SM,
        FFVAE, erasure) also run the unseen-user audit with a one-hidden-layer ReLU probe of this width (the same
        folds, weight decays and validation selection), reported beside it as ``mlp_unseen_auc``: a method that hides
        the attribute from linear probes only is seen there.
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
    audit_batch: int = 8
    audit_hidden: int = 0

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
        if self.audit_batch < 1:
            raise ValueError(f"audit_batch must be at least 1, got {self.audit_batch}")
        if self.audit_se < 0:
            raise ValueError(f"audit_se must be non-negative, got {self.audit_se}")
        if self.audit_hidden < 0:
            raise ValueError(f"audit_hidden must be 0 (off) or a width, got {self.audit_hidden}")


def _logits(params: dict, x: jax.Array) -> jax.Array:
    """``(n, d) -> (n, C)``; a hidden layer is present when ``params`` has ``w1``."""
    if "w1" in params:
        x = jax.nn.relu(x @ params["w1"] + params["b1"])
        return x @ params["w2"] + params["b2"]
    return x @ params["w"] + params["b"]


def _predict(params: dict, x: jax.Array) -> jax.Array:
    return jax.nn.softmax(_logits(params, x), axis=-1)


def _pair_count(scores: jax.Array, positive: jax.Array, negative: jax.Array) -> jax.Array:
    """Twice the Mann-Whitney count: ``sum_{i pos, j neg} 2 [s_i > s_j] + [s_i = s_j]`` (int32), over bool masks of
    one score vector ``(n,)``; twice, so ties stay integers and the AUC (count / (2 P N)) is exact on the host."""
    greater = (scores[:, None] > scores[None, :]).astype(jnp.int32)
    equal = (scores[:, None] == scores[None, :]).astype(jnp.int32)
    pair = (positive[:, None] & negative[None, :]).astype(jnp.int32)
    return jnp.sum(pair * (2 * greater + equal))


def _auc_classes(num_classes: int) -> list[int]:
    """Classes the AUC averages over: class 1 for a binary attribute, every class (one-vs-rest) otherwise."""
    return [1] if num_classes == 2 else list(range(num_classes))


@functools.lru_cache(maxsize=None)
def _build_fitter(num_classes: int, hidden: int, steps: int, eval_every: int, learning_rate: float):
    """Jitted ``fit(train_x, train_y, train_mask, valid_x, valid_y, valid_mask, test_x, weight_decays, keys)``.

    Fits ``P`` probe problems at once, each for every weight decay of the grid: problem ``p``'s rows are
    standardised features padded to fixed lengths, ``train_x (P, Nt, d)``, ``valid_x (P, Nv, d)``, ``test_x (P, Ns,
    d)``, with labels ``(P, Nt)`` / ``(P, Nv)`` and masks that are 0 on padding rows (the loss is the mean over real
    rows only); ``weight_decays (W,)``; ``keys (P, 2)`` raw key data (hidden-layer initialisation).

    Returns ``valid_count (P, W, E, K)``, :func:`_pair_count` of each checkpoint's validation probabilities for each
    AUC class (so the host computes the validation AUC exactly), and ``test_proba (P, W, E, Ns, C)``, each
    checkpoint's test probabilities; checkpoint ``e`` is the state after ``(e + 1) * eval_every`` steps. One program
    per problem shape: the audit's folds are padded to the largest fold, so every fold and redraw shares it.
    """
    tx = optax.adam(learning_rate)
    classes = np.asarray(_auc_classes(num_classes), np.int32)

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

    def loss(params, x, y, mask, wd):
        ce = optax.softmax_cross_entropy_with_integer_labels(_logits(params, x), y)
        l2 = sum(jnp.sum(v**2) for k, v in params.items() if k.startswith("w"))
        return jnp.sum(ce * mask) / jnp.sum(mask) + 0.5 * wd * l2

    def valid_counts(proba, y, mask):
        """``proba (Nv, C) -> (K,)`` pair counts per AUC class over the real validation rows."""
        return jax.vmap(lambda c: _pair_count(proba[:, c], (y == c) & mask, (y != c) & mask))(classes)

    def fit_one(x, y, mask, x_valid, y_valid, valid_mask, x_test, wd, key):
        def step(carry, _):
            params, opt_state = carry
            grads = jax.grad(loss)(params, x, y, mask, wd)
            updates, opt_state = tx.update(grads, opt_state, params)
            return (optax.apply_updates(params, updates), opt_state), None

        def segment(carry, _):
            carry, _ = jax.lax.scan(step, carry, None, length=eval_every)
            params = carry[0]
            return carry, (valid_counts(_predict(params, x_valid), y_valid, valid_mask), _predict(params, x_test))

        params = init(jax.random.wrap_key_data(key), x.shape[1])
        _, out = jax.lax.scan(segment, (params, tx.init(params)), None, length=steps // eval_every)
        return out

    # Same data and initialisation for every grid member; only the weight decay differs.
    over_decays = jax.vmap(fit_one, in_axes=(None, None, None, None, None, None, None, 0, None))
    return jax.jit(jax.vmap(over_decays, in_axes=(0, 0, 0, 0, 0, 0, 0, None, 0)))


@dataclasses.dataclass(frozen=True)
class _Problem:
    """One probe fit: train, select and test user index sets (sorted) into the embedding table, and its key."""

    train: np.ndarray
    valid: np.ndarray
    test: np.ndarray
    key: jax.Array


@dataclasses.dataclass(frozen=True)
class _Fit:
    """A fitted problem's chosen checkpoint: test probabilities ``(n_test, C)`` (float64, in the problem's test
    order), its validation AUC, weight-decay index and checkpoint index."""

    test_proba: np.ndarray
    valid_auc: float
    wd_index: int
    checkpoint: int


def _selected_checkpoints(valid_count: np.ndarray, y_valid: np.ndarray, num_classes: int) -> tuple[np.ndarray, int, int]:
    """Validation AUC ``(E, W)`` of every checkpoint from its pair counts ``(W, E, K)``, and the chosen ``(e, w)``:
    the highest AUC, earliest step then smallest weight decay on ties; the final step of the first weight decay when
    the AUC is undefined everywhere. The counts are exact, so the AUCs equal
    :func:`~jaxfair.metrics.auc.multiclass_auc` of the checkpoint's probabilities (``tests/test_probe.py``)."""
    positive = np.stack([y_valid == c for c in _auc_classes(num_classes)]).sum(axis=1).astype(np.float64)  # (K,)
    negative = len(y_valid) - positive
    defined = (positive > 0) & (negative > 0)
    with np.errstate(invalid="ignore", divide="ignore"):
        per_class = np.where(defined, (valid_count / 2.0) / np.where(defined, positive * negative, 1.0), 0.0)
        count = defined.sum()
        valid_auc = (per_class.sum(axis=-1) / count if count else np.full(valid_count.shape[:-1], np.nan)).T
    if np.isnan(valid_auc).all():
        return valid_auc, valid_auc.shape[0] - 1, 0
    best_e, best_w = np.unravel_index(np.nanargmax(valid_auc), valid_auc.shape)  # step-major: earliest step first
    return valid_auc, int(best_e), int(best_w)


def _fit_problems(x: np.ndarray, y: np.ndarray, problems: list[_Problem], num_classes: int, config: ProbeConfig,
                  lengths: tuple[int, int, int], batch: int) -> list[_Fit]:
    """Fit, select and test every problem, ``batch`` problems per call of one jitted program.

    Features are standardised per problem with the mean and standard deviation of its training users (a constant
    feature is left centred), on the host in float32 as before padding. Each part is padded to ``lengths`` (train,
    valid, test rows); the last call is filled up with copies of the last problem, whose results are dropped.
    """
    fitter = _build_fitter(num_classes, config.hidden, config.steps, config.eval_every, float(config.learning_rate))
    wds = np.asarray(config.weight_decays, dtype=np.float32)
    place, batch = _problem_placement(batch)
    fits: list[_Fit] = []
    for start in range(0, len(problems), batch):
        chunk = problems[start:start + batch]
        chunk = chunk + [chunk[-1]] * (batch - len(chunk))
        arrays = [_problem_arrays(x, y, p, lengths) for p in chunk]
        stacked = [place(np.stack(a)) for a in zip(*arrays)]
        keys = place(np.stack([np.asarray(jax.random.key_data(p.key)) for p in chunk]))
        valid_count, test_proba = fitter(*stacked, wds, keys)
        valid_count, test_proba = np.asarray(valid_count), np.asarray(test_proba)
        for i, problem in enumerate(problems[start:start + batch]):
            valid_auc, e, w = _selected_checkpoints(valid_count[i], y[problem.valid], num_classes)
            proba = np.asarray(test_proba[i, w, e, :len(problem.test)], dtype=np.float64)
            fits.append(_Fit(test_proba=proba, valid_auc=float(valid_auc[e, w]), wd_index=w, checkpoint=e))
    return fits


def _problem_placement(batch: int):
    """``(place, batch)``: how a stack of ``batch`` problems goes to the devices. With several local devices (one
    per CPU core under the ``jaxfair`` command, :mod:`jaxfair.cpu_devices`; or several accelerators) and more than one
    problem, the problem axis is sharded over them, ``batch`` rounded up to a multiple of their count (the padding
    problems are copies, dropped); every problem is independent, so no device waits on another."""
    devices = jax.local_devices()
    if len(devices) == 1 or batch == 1:
        return jax.device_put, batch
    sharding = NamedSharding(Mesh(np.asarray(devices), ("problems",)), PartitionSpec("problems"))
    return (lambda array: jax.device_put(array, sharding)), -(-batch // len(devices)) * len(devices)


def _problem_arrays(x: np.ndarray, y: np.ndarray, problem: _Problem, lengths: tuple[int, int, int]):
    """``(train_x, train_y, train_mask, valid_x, valid_y, valid_mask, test_x)`` of one problem, padded to
    ``lengths``."""
    train = problem.train
    mean = x[train].mean(axis=0)
    std = x[train].std(axis=0)
    std = np.where(std > 0, std, 1.0)

    def rows(users, length):
        out = np.zeros((length, x.shape[1]), np.float32)
        out[:len(users)] = (x[users] - mean) / std
        return out

    def labels(users, length):
        out = np.zeros(length, np.int32)
        out[:len(users)] = y[users]
        return out

    def mask(users, length, dtype):
        return (np.arange(length) < len(users)).astype(dtype)

    (nt, nv, ns) = lengths
    return (rows(train, nt), labels(train, nt), mask(train, nt, np.float32),
            rows(problem.valid, nv), labels(problem.valid, nv), mask(problem.valid, nv, bool),
            rows(problem.test, ns))


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
    x, y = _checked(embeddings, labels, num_classes)
    train, valid, test = (np.asarray(probe_users[s]) for s in ("train", "valid", "test"))
    problem = _Problem(train=train, valid=valid, test=test, key=key)
    fit = _fit_problems(x, y, [problem], num_classes, config, (len(train), len(valid), len(test)), batch=1)[0]

    y_test = y[test]
    auc = multiclass_auc(y_test, fit.test_proba)
    majority = np.bincount(y_test, minlength=num_classes).max() / len(test) if len(test) else np.nan
    auc_ci = _bootstrap_ci(y_test, fit.test_proba, key, config)

    extra = {"test_proba": fit.test_proba} if return_test_proba else {}
    return {
        **extra,
        "auc": auc,
        "auc_ci": auc_ci,
        "valid_auc": fit.valid_auc,
        "weight_decay": float(config.weight_decays[fit.wd_index]),
        "step": int((fit.checkpoint + 1) * config.eval_every),
        "num_test": int(len(test)),
        "majority_rate": float(majority),
    }


def _checked(embeddings, labels, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """float32 embeddings and int32 labels, after checking the class count and the labels' range."""
    if num_classes < 2:
        raise ValueError(f"num_classes must be at least 2, got {num_classes}")
    x = np.asarray(embeddings, dtype=np.float32)
    y = np.asarray(labels).astype(np.int32)
    if y.size and (y.min() < 0 or y.max() >= num_classes):
        raise ValueError(f"labels must lie in [0, {num_classes})")
    return x, y


def audit_folds(users: np.ndarray, y: np.ndarray, key: jax.Array, folds: int) -> list[dict[str, np.ndarray]]:
    """One cross-fitting of sorted ``users`` into ``folds`` parts drawn from ``key``: for fold ``k``, ``train`` (the
    other parts except part ``k + 1`` mod ``folds``), ``valid`` (part ``k + 1``) and ``test`` (part ``k``), each
    sorted. Stratified: the users, shuffled within each class and lined up class after class, are dealt round-robin
    over the folds from a random fold onwards, so the folds' sizes differ by at most one and every fold holds each
    class in about its overall share."""
    rng = np.random.default_rng(_seed_from_key(jax.random.fold_in(key, 7)))
    lined = np.concatenate([rng.permutation(users[y[users] == c]) for c in np.unique(y[users])])
    fold_of = (int(rng.integers(folds)) + np.arange(len(lined))) % folds
    parts = [lined[fold_of == k] for k in range(folds)]
    splits = []
    for k in range(folds):
        valid_part = (k + 1) % folds
        train = np.concatenate([parts[j] for j in range(folds) if j not in (k, valid_part)])
        splits.append({"train": np.sort(train), "valid": np.sort(parts[valid_part]), "test": np.sort(parts[k])})
    return splits


def _audit_draw_key(key: jax.Array, r: int) -> jax.Array:
    """The key of the audit's ``r``-th draw of folds: ``key`` itself first, then ``fold_in(key, 10_000 + r)``."""
    return key if r == 0 else jax.random.fold_in(key, 10_000 + r)


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

    One cross-fitting shuffles ``users`` into ``folds`` parts (:func:`audit_folds`); for fold ``k`` a probe (as in
    :func:`probe_attribute`, with key ``fold_in(draw key, k)``) is trained on the other parts except part ``k + 1``
    (mod ``folds``), selected on part ``k + 1`` and scored on part ``k``; every user is scored once, by a probe that
    never saw them, and the AUC is computed over all of them together. That AUC depends on the draw of the folds (by
    about 0.02 on a few hundred users), so the audit repeats the cross-fitting, the ``r``-th time with folds drawn
    from ``fold_in(key, 10_000 + r)`` (the first from ``key`` itself), at least ``config.audit_repeats`` times and
    until the standard error of the mean AUC is at most ``config.audit_se`` (or ``config.audit_max_repeats``
    draws), and reports the mean AUC and its spread.

    The draws are fitted ``config.audit_batch`` at a time, all their folds and weight decays in one call of one
    jitted program (the folds padded to the largest fold's length, so every draw shares the program); the stopping
    rule is then applied draw by draw in order, and draws fitted past the stopping point are dropped, so the result
    depends on ``audit_batch`` only through float rounding (programs of different batch sizes round differently; a
    near-tie between two folds' probabilities can flip one pair of the pooled AUC).

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
      one repeat), ``auc_se`` (the standard error of the mean), ``repeat_auc`` (each repeat's), ``auc_ci``
      (percentile bootstrap over ``users`` of the mean: each resample of users re-scores every repeat's out-of-fold
      probabilities, :func:`~jaxfair.metrics.auc.mean_resampled_auc`; ``None`` without resamples), ``fold_auc`` (per
      fold of the first repeat), ``repeats`` and ``num_users``.
    """
    users = np.sort(np.asarray(users))
    if folds < 3 or len(users) < folds:
        raise ValueError(f"need folds >= 3 and at least `folds` users, got folds={folds} and {len(users)} users")
    x, y = _checked(embeddings, labels, num_classes)
    y_users = y[users]
    n = len(users)
    lengths = (n - 2 * (n // folds), -(-n // folds), -(-n // folds))
    position = np.searchsorted(users, np.arange(len(y)))  # user -> row among `users` (only read for members)
    probas, repeat_auc, fold_auc = [], [], None
    done = False
    while not done and len(probas) < config.audit_max_repeats:
        draws = range(len(probas), min(len(probas) + config.audit_batch, config.audit_max_repeats))
        splits = {r: audit_folds(users, y, _audit_draw_key(key, r), folds) for r in draws}
        problems = [_Problem(s["train"], s["valid"], s["test"], jax.random.fold_in(_audit_draw_key(key, r), k))
                    for r in draws for k, s in enumerate(splits[r])]
        fits = _fit_problems(x, y, problems, num_classes, config, lengths, batch=config.audit_batch * folds)
        for i, r in enumerate(draws):
            proba = np.zeros((n, num_classes))
            for k, split in enumerate(splits[r]):
                proba[position[split["test"]]] = fits[i * folds + k].test_proba
            if r == 0:
                fold_auc = [multiclass_auc(y[s["test"]], fits[k].test_proba) for k, s in enumerate(splits[r])]
            probas.append(proba)
            repeat_auc.append(multiclass_auc(y_users, proba))
            if len(probas) >= config.audit_repeats and _standard_error(repeat_auc) <= config.audit_se:
                done = True
                break
    repeat_auc = np.asarray(repeat_auc)
    auc_ci = None
    if config.bootstrap:
        counts = _bootstrap_counts(n, key, config)
        auc_ci = _percentile_interval(mean_resampled_auc(y_users, np.stack(probas), counts), config)
    return {"auc": float(np.mean(repeat_auc)),
            "auc_std": float(np.std(repeat_auc, ddof=1)) if len(repeat_auc) > 1 else 0.0,
            "auc_se": _standard_error(repeat_auc), "repeat_auc": [float(a) for a in repeat_auc], "auc_ci": auc_ci,
            "fold_auc": [float(a) for a in fold_auc], "repeats": len(repeat_auc), "num_users": int(n)}


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
