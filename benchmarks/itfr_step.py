"""Benchmark ITFR's training step: jaxfair's jitted step (all groups' gradients from one backward pass over the rows,
the G perturbed points in one ``jax.vmap``) against a PyTorch implementation of the same step with a Python loop
over the groups, and how both grow with the number of intersectional groups G. Every number is measured in this one
run.

    python -m benchmarks.itfr_step [--users 942 --items 491 --dim 64 --batch 1024 --batches 29 --groups 4 12 24 48
                                    --repeats 30 --epoch-repeats 10 --scaling-torch-threads 1 --no-compile]
    python -m benchmarks.itfr_step --quick --out /tmp/itfr_step.json      # tiny shapes, a few repeats

Run from the repository root.
Shapes default to the ITFR MovieLens-100k recipe (942 users, 491 items, d = 64, batches of 1,024 BPR rows, 29
batches an epoch; the recipe's last batch is partly padding, here every batch is full). The backbone is MF: params
``{"user": (U, d), "item": (I, d)}`` drawn from ``normal(0, 0.1)`` (cosine MF's initialisation), embedding map the
identity. Users get one of 2 user groups and items one of ``G / 2`` item groups at random (numpy, seeded); a row's
group is ``a(u) C + c(pos)`` as in training; users, positives and negatives are drawn uniformly. The step is
:func:`jaxfair.methods.itfr.make_train_step` with ``ItfrConfig()`` (cosine score / tau, first-order SAM with radius
rho, collaborative loss balance) and :func:`jaxfair.training.optim.make`'s Adam at the recipe's learning rate 1e-3
(the config's ``train`` section with that learning rate).

Variants, timed at every G of ``--groups`` (``--headline-groups``, 12 = 2 genders x 6 genres, is the recipe's):

* ``jax_step``: ``jax.jit(make_train_step(...))``, one call on one batch, blocked on.
* ``jax_epoch``: ``make_epoch_fn(step, end_epoch=itfr.end_epoch)`` (a ``lax.scan`` over the stacked epoch, then the
  epoch roll-over), as training runs it; reported per epoch and per step (epoch / batches).
* ``mf_epoch`` (headline G only): the same epoch with ``ItfrConfig(balance="none", sam=False)``, plain BPR on the
  cosine score: the cost of training the backbone without ITFR.
* ``torch``: PyTorch (:class:`benchmarks.references.itfr.TorchItfr`; ``pip install torch==2.13.0``, the ``bench``
  extra; skipped with a note if missing) written for the benchmarks only, the way the authors' code is organised: a
  Python loop over the groups, each selecting its rows by a boolean mask, ``torch.autograd.grad`` at theta, a
  perturbed copy ``theta + rho g / ||g||`` (the live parameters are never written, so nothing needs restoring and the
  update starts exactly from theta), loss and ``torch.autograd.grad`` there; then the collaborative weights
  (gradient-cosine matrix against the previous epoch's group gradients, loss matrix, multiplicative update with
  present-group renormalisation and floor) and one ``torch.optim.Adam`` step on ``sum_g q_g grad~_g``. Timed at the
  headline G as ``torch_<mode>_<threads>t_G<G>``: eager and under ``torch.compile`` (``--no-compile`` drops it; the
  warm-up, compile included, is reported as ``torch_warmup_s``), each with 1 thread (a reference that suffers less
  when other processes share the cores: a loop of small ops waits on every descheduled OpenMP thread) and with every
  core (:func:`benchmarks.timing.torch_variants`); and eager at every G of ``--groups`` up to ``--torch-max-groups``
  with ``--scaling-torch-threads`` (the ``scaling`` rows). Same work: both sides compute every present group's
  gradient at theta and at its perturbed point and one Adam step on the weighted sum (JAX from one backward pass
  over the rows, PyTorch group by group, as the authors' code does); the checks below show the results agree.

State: the timed JAX and PyTorch steps start from the JAX state after two epochs, so the previous-epoch group
gradients exist and the gradient-similarity path of the collaborative balance is the one timed.

Same computation (``checks``): at every G where PyTorch is timed, the PyTorch step is loaded with a JAX state and
takes one step on the same batch as the JAX step, once from the initial state (first epoch: similarity = identity)
and once from the state after two epochs (similarity from the previous epoch's gradients). The updated parameters,
group weights, Adam first moments (the update direction), and the epoch sums of group gradients and losses are
compared; each gets its largest absolute difference and, for scale, the largest absolute JAX value.
``check_max_abs_diff_params`` is the largest parameter difference over all of them.

Timings: every variant first runs untimed (compiling / warm-up, the checks); then the step variants are timed
``--repeats`` times and the epoch variants ``--epoch-repeats`` times, round-robin over the variants so that load
from other processes falls on all of them alike (pre-drawn batches cycled, JAX results blocked on). Reported: the
median in milliseconds with quartiles. Ratios, all from medians of this run: at the headline G,
``torch_<mode>_<threads>t_over_jax_step`` (PyTorch step / one jitted JAX step call) and
``..._over_jax_epoch_per_step`` (PyTorch step / JAX step inside the epoch scan), ``best_torch_over_*`` (the fastest
PyTorch variant), and ``itfr_over_mf_epoch`` (ITFR epoch / plain-BPR epoch); per G in ``scaling``, ``torch_over_jax_step`` and each time over the same variant's time at the smallest G
(``*_over_base``: 1 would be a cost constant in G, G / G_min a linear one). The load average at the start and end
is recorded: on a shared 2-core machine it bounds how far the numbers can be trusted. The roofline block gives XLA's
FLOP count of one JAX step against this machine's matmul rate measured in the same run.
"""

from __future__ import annotations

import argparse
import dataclasses
import pathlib
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax

from benchmarks.references import itfr as torch_itfr
from benchmarks.timing import (device_info, finish, interleaved_ms, jax_epoch_caller, jax_step_caller, jaxlib_version,
                               matmul_rates, median_and_quartiles, nothing, parse_with_quick, roofline, roofline_line,
                               torch_modes, torch_or_reason, torch_ratios, torch_variant_name, torch_variants,
                               xla_flops)
from jaxfair.data.groups import intersectional_groups
from jaxfair.methods import itfr
from jaxfair.training import optim
from jaxfair.training.step import make_epoch_fn

DEFAULT_OUT = pathlib.Path(__file__).resolve().parent / "results" / "itfr_step.json"
QUICK = {"users": 40, "items": 30, "dim": 8, "batch": 64, "batches": 3, "groups": [4, 12], "repeats": 3,
         "epoch_repeats": 2}
LEARNING_RATE = 1e-3
INIT_STD = 0.1


def make_inputs(users, items, dim, batch, count, seed=0):
    """Random MF tables, a random user group (of 2) per user, and ``count`` batches of uniform BPR rows (numpy)."""
    rng = np.random.default_rng(seed)
    params = {"user": (INIT_STD * rng.normal(size=(users, dim))).astype(np.float32),
              "item": (INIT_STD * rng.normal(size=(items, dim))).astype(np.float32)}
    user_group = rng.integers(0, 2, users).astype(np.int32)
    rows = {key: rng.integers(0, size, (count, batch)).astype(np.int32)
            for key, size in (("user", users), ("pos", items), ("neg", items))}
    rows["weight"] = np.ones((count, batch), np.float32)
    return params, user_group, rows


def with_groups(rows, user_group, num_groups, items, seed):
    """``rows`` plus each row's intersectional group, items drawn into ``num_groups / 2`` item groups at random."""
    item_groups = num_groups // 2
    item_group = np.random.default_rng(seed).integers(0, item_groups, items).astype(np.int32)
    return {**rows, "group": intersectional_groups(user_group, item_group, rows["user"], rows["pos"], item_groups)}


# --- JAX ----------------------------------------------------------------------------------------------------------


def identity_embed(params):
    return params["user"], params["item"]


class JaxSetup:
    """jaxfair's jitted step and epoch for one G, and the states the checks and timings start from.

    Attributes:
      step: ``jax.jit`` of the train step; epoch: :func:`make_epoch_fn` of it with :func:`itfr.end_epoch`.
      train: the loop settings the optimizer is built from (``config.train`` at :data:`LEARNING_RATE`).
      batches: the stacked epoch (device arrays); batch_list: its batches one by one.
      initial: the initial state; later: the state after two epochs (the first one compiles the epoch).
    """

    def __init__(self, params, rows, num_groups, config):
        self.train = dataclasses.replace(config.train, learning_rate=LEARNING_RATE)
        tx = optim.make(self.train)
        train_step = itfr.make_train_step(identity_embed, num_groups, config, tx)
        self.step = jax.jit(train_step)
        self.epoch = make_epoch_fn(train_step, end_epoch=itfr.end_epoch)
        self.key = jax.random.key(0)
        self.batches = jax.tree.map(jnp.asarray, rows)
        self.batch_list = [jax.tree.map(lambda x, i=i: x[i], self.batches) for i in range(len(rows["user"]))]
        self.initial = itfr.init_state(jax.tree.map(jnp.asarray, params), tx, num_groups)
        state = self.initial
        for _ in range(2):
            state, _ = jax.block_until_ready(self.epoch(state, self.batches, self.key))
        self.later = state

    def step_variant(self, state):
        return jax_step_caller(self.step, state, self.batch_list, self.key)

    def epoch_variant(self, state):
        return jax_epoch_caller(self.epoch, state, self.batches, self.key)


# --- PyTorch and the checks ----------------------------------------------------------------------------------------


def torch_model(state: itfr.ItfrState, setup: "JaxSetup", config, threads: int) -> torch_itfr.TorchItfr:
    """The PyTorch reference loaded from ``state``, with the JAX setup's Adam settings."""
    return torch_itfr.TorchItfr(state, config, threads, learning_rate=setup.train.learning_rate,
                                weight_decay=setup.train.weight_decay)


def check_same_step(setup: JaxSetup, config, batch) -> dict:
    """One JAX and one PyTorch step on batch 0 from the first-epoch and the later-epoch state, compared."""
    out = {}
    for name, state in (("first_epoch", setup.initial), ("later_epoch", setup.later)):
        model = torch_model(state, setup, config, threads=1)
        model.step(batch)
        out[name] = torch_itfr.compare(setup.step(state, setup.batch_list[0], setup.key)[0], model)
    return out


# --- main ---------------------------------------------------------------------------------------------------------


def torch_name(threads, num_groups, mode="eager"):
    return torch_variant_name("torch", mode, threads, f"_G{num_groups}")


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--users", type=int, default=942)
    parser.add_argument("--items", type=int, default=491)
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--batch", type=int, default=1024)
    parser.add_argument("--batches", type=int, default=29, help="batches an epoch (the epoch variants' scan length)")
    parser.add_argument("--groups", type=int, nargs="+", default=[4, 12, 24, 48],
                        help="intersectional group counts G (2 user groups x G/2 item groups)")
    parser.add_argument("--headline-groups", type=int, default=12, help="the G of the headline numbers (added to "
                                                                        "--groups if missing)")
    parser.add_argument("--repeats", type=int, default=30, help="timed calls of every step variant (median reported)")
    parser.add_argument("--epoch-repeats", type=int, default=10, help="timed calls of every epoch variant")
    parser.add_argument("--scaling-torch-threads", type=int, default=1, help="PyTorch threads at every G")
    parser.add_argument("--torch-max-groups", type=int, default=48, help="time PyTorch only at G up to this")
    args = parse_with_quick(parser, argv, QUICK, DEFAULT_OUT.relative_to(DEFAULT_OUT.parents[2]))
    args.groups = sorted(set(args.groups) | {args.headline_groups})
    if any(g < 2 or g % 2 for g in args.groups):
        parser.error(f"every G must be an even number >= 2 (2 user groups x G/2 item groups), got {args.groups}")
    return args


def main(argv=None):
    args = parse_args(argv)
    out = args.out if args.out or args.quick else str(DEFAULT_OUT)
    config, mf_config = itfr.ItfrConfig(), itfr.ItfrConfig(balance="none", sam=False)
    params, user_group, base_rows = make_inputs(args.users, args.items, args.dim, args.batch, args.batches)
    results = {
        "shapes": {"users": args.users, "items": args.items, "dim": args.dim, "batch": args.batch,
                   "batches_per_epoch": args.batches, "user_groups": 2, "groups": args.groups,
                   "headline_groups": args.headline_groups},
        "config": dataclasses.asdict(config), "learning_rate": LEARNING_RATE,
        "repeats": args.repeats, "epoch_repeats": args.epoch_repeats, "quick": args.quick,
        "device": device_info(),
        "python_version": sys.version.split()[0], "numpy_version": np.__version__, "jax_version": jax.__version__,
        "jaxlib_version": jaxlib_version(),
        "optax_version": optax.__version__,
    }
    torch_groups = []
    torch, skipped = torch_or_reason(args.no_torch)
    if torch is None:
        results["torch_skipped"] = skipped
    else:
        results.update(torch_version=torch.__version__, scaling_torch_threads=args.scaling_torch_threads)
        torch_groups = [g for g in args.groups if g <= args.torch_max_groups]

    step_variants, epoch_variants, present, checks = {}, {}, {}, {}
    for num_groups in args.groups:
        rows = with_groups(base_rows, user_group, num_groups, args.items, seed=num_groups)
        present[num_groups] = float(np.mean([len(np.unique(g)) for g in rows["group"]]))
        setup = JaxSetup(params, rows, num_groups, config)
        step_variants[f"jax_step_G{num_groups}"] = (nothing, setup.step_variant(setup.later))
        epoch_variants[f"jax_epoch_G{num_groups}"] = (nothing, setup.epoch_variant(setup.later))
        if num_groups == args.headline_groups:
            mf = JaxSetup(params, rows, num_groups, mf_config)
            epoch_variants[f"mf_epoch_G{num_groups}"] = (nothing, mf.epoch_variant(mf.later))
        if num_groups in torch_groups:
            batches = torch_itfr.torch_batches(rows)
            checks[f"G{num_groups}"] = check_same_step(setup, config, batches[0])
            if num_groups == args.headline_groups:
                def build(threads, setup=setup, batches=batches):
                    model = torch_model(setup.later, setup, config, threads)
                    return model, model.variant(batches)[1]

                built, results["torch_warmup_s"], results["torch_failed"] = torch_variants(
                    torch, build, modes=torch_modes(args.no_compile), suffix=f"_G{num_groups}")
                step_variants.update(built)
            if torch_name(args.scaling_torch_threads, num_groups) not in step_variants:
                model = torch_model(setup.later, setup, config, args.scaling_torch_threads)
                model.step(batches[0])  # warm-up
                step_variants[torch_name(args.scaling_torch_threads, num_groups)] = model.variant(batches)
        if num_groups == args.headline_groups:
            flops = xla_flops(setup.step, setup.later, setup.batch_list[0], setup.key)

    times = {**interleaved_ms(step_variants, args.repeats), **interleaved_ms(epoch_variants, args.epoch_repeats)}
    ms, results["quartiles_ms"] = {}, {}
    for name, values in times.items():
        ms[name], results["quartiles_ms"][name] = median_and_quartiles(values)
    results["median_ms"] = ms

    g = args.headline_groups
    results.update({
        "jax_step_ms": ms[f"jax_step_G{g}"],
        "jax_epoch_ms": ms[f"jax_epoch_G{g}"],
        "jax_epoch_per_step_ms": ms[f"jax_epoch_G{g}"] / args.batches,
        "mf_epoch_ms": ms[f"mf_epoch_G{g}"],
        "mf_epoch_per_step_ms": ms[f"mf_epoch_G{g}"] / args.batches,
        "itfr_over_mf_epoch": ms[f"jax_epoch_G{g}"] / ms[f"mf_epoch_G{g}"],
    })
    torch_ms = {name[: -len(f"_G{g}")]: value for name, value in ms.items()
                if name.startswith("torch_") and name.endswith(f"_G{g}")}
    results.update({f"{name}_ms": value for name, value in torch_ms.items()})
    results.update(torch_ratios(torch_ms, results["jax_step_ms"], "jax_step"))
    results.update(torch_ratios(torch_ms, results["jax_epoch_per_step_ms"], "jax_epoch_per_step"))
    rates = matmul_rates({"large": (1024, 1024, 1024), "step": (args.batch, args.dim, args.dim)})
    results["roofline"] = roofline(results["jax_epoch_per_step_ms"], flops, rates)

    base = args.groups[0]
    results["scaling_base_groups"] = base
    results["scaling"] = []
    for num_groups in args.groups:
        row = {"groups": num_groups, "item_groups": num_groups // 2, "groups_present_per_batch": present[num_groups],
               "jax_step_ms": ms[f"jax_step_G{num_groups}"],
               "jax_epoch_per_step_ms": ms[f"jax_epoch_G{num_groups}"] / args.batches}
        row["jax_step_over_base"] = row["jax_step_ms"] / ms[f"jax_step_G{base}"]
        row["jax_epoch_per_step_over_base"] = ms[f"jax_epoch_G{num_groups}"] / ms[f"jax_epoch_G{base}"]
        name = torch_name(args.scaling_torch_threads, num_groups)
        if name in ms:
            row["torch_ms"] = ms[name]
            row["torch_over_jax_step"] = row["torch_ms"] / row["jax_step_ms"]
            if torch_name(args.scaling_torch_threads, base) in ms:
                row["torch_over_base"] = row["torch_ms"] / ms[torch_name(args.scaling_torch_threads, base)]
        results["scaling"].append(row)

    if checks:
        results["checks"] = checks
        results["check_max_abs_diff_params"] = max(c["params"]["max_abs_diff"] for per_g in checks.values()
                                                   for c in per_g.values())
    return finish(results, out, lambda r: report(r, args))


def report(results, args):
    """The readable table."""
    g, q = args.headline_groups, results["quartiles_ms"]
    print(f"ITFR train step (MF, cosine/tau, SAM, collaborative balance), U={args.users} I={args.items} d={args.dim} "
          f"B={args.batch}, {args.batches} batches/epoch; median of {args.repeats} steps / {args.epoch_repeats} "
          f"epochs ({results['device']['jax_backend']}, {results['device']['cpu_count']} cpus, load average "
          f"{results['device']['load_average_at_start'][0]:.2f} -> {results['device']['load_average_at_end'][0]:.2f})")
    print(f"G = {g} (2 user groups x {g // 2} item groups):")
    lines = [("jax step, one jitted call", f"jax_step_G{g}", 1),
             ("jax step inside the epoch scan", f"jax_epoch_G{g}", args.batches),
             *[(f"{name[:-len(f'_G{g}')]} (warm-up {warm:.1f} s)", name, 1)
               for name, warm in results.get("torch_warmup_s", {}).items()],
             ("plain BPR (MF) inside the epoch scan", f"mf_epoch_G{g}", args.batches)]
    for label, name, per in lines:
        if name in results["median_ms"]:
            value, (q1, q3) = results["median_ms"][name], q[name]
            epoch = f"   epoch {value:9.2f} ms" if per > 1 else ""
            print(f"  {label:38s} {value / per:9.3f} ms/step (quartiles {q1 / per:.3f} .. {q3 / per:.3f}){epoch}")
    for key, value in results.items():
        if ("_over_" in key and isinstance(value, float)) or key == "check_max_abs_diff_params":
            print(f"  {key:44s} {value:9.4g}")
    for name, error in results.get("torch_failed", {}).items():
        print(f"  {name} failed: {error}")
    print("  " + roofline_line(results["roofline"]))
    base = results["scaling_base_groups"]
    print(f"Scaling with G (ms per step; x = over G={base}; torch with {args.scaling_torch_threads} thread(s)):")
    print(f"  {'G':>4s} {'present':>8s} {'jax step':>10s} {'x':>6s} {'jax scan':>10s} {'x':>6s} {'torch':>10s} "
          f"{'x':>6s} {'torch/jax':>10s}")
    for row in results["scaling"]:
        torch_cells = f"{'-':>10s} {'-':>6s} {'-':>10s}"
        if "torch_ms" in row:
            torch_cells = (f"{row['torch_ms']:10.3f} {row.get('torch_over_base', float('nan')):6.2f} "
                           f"{row['torch_over_jax_step']:10.2f}")
        print(f"  {row['groups']:4d} {row['groups_present_per_batch']:8.1f} {row['jax_step_ms']:10.3f} "
              f"{row['jax_step_over_base']:6.2f} {row['jax_epoch_per_step_ms']:10.3f} "
              f"{row['jax_epoch_per_step_over_base']:6.2f} {torch_cells}")
    for name, per_state in results.get("checks", {}).items():
        for state, quantities in per_state.items():
            cells = ", ".join(f"{k} {v['max_abs_diff']:.2g} (of {v['max_abs']:.2g})" for k, v in quantities.items())
            print(f"  check {name} {state}: max abs diff {cells}")
    if "torch_skipped" in results:
        print(f"  torch skipped: {results['torch_skipped']}")


if __name__ == "__main__":
    main()
