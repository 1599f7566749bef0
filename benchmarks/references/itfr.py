"""PyTorch reference of ITFR's training step (MF tables, cosine score / tau, first-order SAM, collaborative loss
balance), written for the benchmarks only, the way the authors' code is organised.

It mirrors :func:`jaxfair.methods.itfr.make_train_step` with ``itfr.Config()``'s switches and the optimizer of
:func:`jaxfair.training.optim.make` (Adam with coupled L2), and must agree with it (``tests/test_torch_references.py``;
``benchmarks/itfr_step.py`` records the comparison under ``checks``): a Python loop over the groups, each selecting its
rows by a boolean mask, ``torch.autograd.grad`` at theta, a perturbed copy ``theta + rho g / ||g||`` (the live
parameters are never written, so the update starts exactly from theta), the loss and ``torch.autograd.grad`` there;
then the collaborative weights (gradient-cosine matrix against the previous epoch's group gradients, loss matrix,
multiplicative update with present-group renormalisation and floor) and one ``torch.optim.Adam`` step on
``sum_g q_g grad~_g``. The epoch roll-over (:func:`jaxfair.methods.itfr.end_epoch`) is not part of a step: a model
loaded from a later-epoch JAX state continues from that state's previous-epoch statistics.

:class:`TorchItfr` is loaded from a JAX :class:`jaxfair.methods.itfr.ItfrState`; :func:`compare` measures how far
its state is from a JAX state after the same step. PyTorch is imported when a model is built, so importing this
module does not need it.
"""

from __future__ import annotations

import jax
import numpy as np
import optax
from jax.flatten_util import ravel_pytree

TABLES = ("user", "item")  # the PyTorch parameter order


def torch_order(stacked_flat, params) -> np.ndarray:
    """JAX's flat ``(G, P)`` rows (``ravel_pytree`` order) as ``(G, P)`` rows in the PyTorch order of ``TABLES``."""
    unravel = ravel_pytree(params)[1]
    tables = jax.vmap(unravel)(stacked_flat)
    return np.concatenate([np.asarray(tables[name]).reshape(len(stacked_flat), -1) for name in TABLES], axis=1)


def torch_batches(rows) -> list[dict]:
    """Stacked numpy batches (``user``, ``pos``, ``neg``, ``group``, ``weight``; leading axis the batch) as one dict of
    PyTorch tensors per batch (indices as ``long``)."""
    import torch

    return [{key: torch.tensor(value[i]).long() if key != "weight" else torch.tensor(value[i]) for key, value in
             rows.items()} for i in range(len(rows["user"]))]


class TorchItfr:
    """ITFR's step in PyTorch, started from a JAX :class:`~jaxfair.methods.itfr.ItfrState`: its parameters, Adam
    moments and step count, group weights, epoch sums, previous-epoch gradients and losses, and epoch counter.

    Args:
      state: the JAX state (MF parameters ``{"user": (U, d), "item": (I, d)}``).
      config: :class:`jaxfair.methods.itfr.Config` (``tau``, ``rho``, ``eta``, ``gamma``, ``weight_floor``; cosine
        score, SAM and the collaborative balance are what this reference implements).
      threads: ``torch.set_num_threads`` (process-wide).
      learning_rate, weight_decay: the Adam (coupled L2) of ``optim.make(TrainConfig(learning_rate, weight_decay))``.
    """

    def __init__(self, state, config, threads: int, learning_rate: float, weight_decay: float = 0.0):
        import torch

        if not (config.sam and config.balance == "collaborative" and config.score_normalization):
            raise ValueError("the PyTorch ITFR reference implements SAM, the collaborative balance and the cosine "
                             "score only")
        self.torch, self.config, self.threads = torch, config, threads
        torch.set_num_threads(threads)
        tensor = lambda x: torch.tensor(np.array(x, np.float32))  # noqa: E731
        self.params = [tensor(state.params[name]).requires_grad_() for name in TABLES]
        self.sizes = [p.numel() for p in self.params]
        self.optimizer = torch.optim.Adam(self.params, lr=learning_rate, weight_decay=weight_decay)
        count = int(optax.tree_utils.tree_get(state.opt_state, "count"))
        if count:
            mu = optax.tree_utils.tree_get(state.opt_state, "mu")
            nu = optax.tree_utils.tree_get(state.opt_state, "nu")
            for p, name in zip(self.params, TABLES):
                self.optimizer.state[p] = {"step": torch.tensor(float(count)), "exp_avg": tensor(mu[name]),
                                           "exp_avg_sq": tensor(nu[name])}
        self.num_groups = len(state.weights)
        self.weights = tensor(state.weights)
        self.grad_sum = tensor(torch_order(state.grad_sum, state.params))
        self.prev_grads = tensor(torch_order(state.prev_grads, state.params))
        self.loss_sum, self.count_sum = tensor(state.loss_sum), tensor(state.count_sum)
        self.prev_loss = tensor(state.prev_loss)
        self.epoch = int(state.epoch)

    def loss(self, tables, user, pos, neg):
        """Mean BPR of the rows on ``cos(e_u, e_i) / tau``."""
        users, items = tables
        normalize = lambda x: x * self.torch.rsqrt((x * x).sum(-1, keepdim=True) + 1e-12)  # noqa: E731
        u = normalize(users[user])
        score = lambda v: (u * normalize(v)).sum(-1) / self.config.tau  # noqa: E731
        return -self.torch.nn.functional.logsigmoid(score(items[pos]) - score(items[neg])).mean()

    def exponents(self, losses, grads):
        """``e = eta (M * S) p`` from the SAM losses ``(G,)`` and gradients ``(G, P)``."""
        torch, config = self.torch, self.config
        eye = torch.eye(self.num_groups)
        if self.epoch == 0:
            similarity, other = eye, losses
        else:
            norms = grads.norm(dim=1)[:, None] * self.prev_grads.norm(dim=1)[None, :]
            similarity = (grads @ self.prev_grads.T) / norms.clamp_min(1e-12) * (1 - eye) + eye
            other = self.prev_loss
        roots = losses.clamp_min(0).sqrt()[:, None] * other.clamp_min(0).sqrt()[None, :]
        scale = roots * (1 - eye) + torch.diag(losses)
        powered = losses.clamp_min(0) ** config.gamma
        return config.eta * (scale * similarity) @ (powered / powered.sum().clamp_min(1e-12))

    def update_weights(self, exponents, present):
        """Multiplicative update among the present groups (their mass kept), absent groups unchanged, then the
        floor."""
        torch, weights = self.torch, self.weights
        if present.any():
            grown = torch.where(present, weights * (exponents - exponents[present].max()).exp(), 0.0)
            mass = weights[present].sum()
            weights = torch.where(present, mass * grown / grown.sum().clamp_min(1e-30), weights)
        return weights.clamp_min(self.config.weight_floor)

    def step(self, batch):
        """One ITFR step on ``batch`` (``user``, ``pos``, ``neg``, ``group`` long, ``weight`` float tensors)."""
        torch, config, num_groups = self.torch, self.config, self.num_groups
        size = sum(self.sizes)
        losses, counts = torch.zeros(num_groups), torch.zeros(num_groups)
        point, sharp = torch.zeros(num_groups, size), torch.zeros(num_groups, size)
        for g in range(num_groups):
            rows = (batch["group"] == g) & (batch["weight"] > 0)
            n = int(rows.sum())
            if n == 0:
                continue
            user, pos, neg = batch["user"][rows], batch["pos"][rows], batch["neg"][rows]
            grads = torch.autograd.grad(self.loss(self.params, user, pos, neg), self.params)
            flat = torch.cat([grad.reshape(-1) for grad in grads])
            norm = flat.norm()
            perturbed = [(p.detach() + config.rho * grad / (norm + 1e-12)).requires_grad_()
                         for p, grad in zip(self.params, grads)]
            loss = self.loss(perturbed, user, pos, neg)
            sharp_grads = torch.autograd.grad(loss, perturbed)
            losses[g], counts[g] = loss.detach(), n
            point[g], sharp[g] = flat, torch.cat([grad.reshape(-1) for grad in sharp_grads])
        with torch.no_grad():
            present = counts > 0
            self.weights = self.update_weights(self.exponents(losses, sharp), present)
            direction = torch.where(present, self.weights, 0.0) @ sharp
            self.grad_sum += counts[:, None] * point
            self.loss_sum += counts * losses
            self.count_sum += counts
        for p, grad in zip(self.params, direction.split(self.sizes)):
            p.grad = grad.view_as(p)
        self.optimizer.step()

    def variant(self, batches):
        """``(prepare, call(r))`` for :func:`benchmarks.timing.interleaved_ms`: ``prepare`` sets this variant's
        thread count (``torch.set_num_threads`` is process-wide), ``call`` steps on batch ``r`` (cycling)."""
        return (lambda: self.torch.set_num_threads(self.threads)), (lambda r: self.step(batches[r % len(batches)]))


def compare(jax_state, model: TorchItfr) -> dict:
    """Largest absolute difference (and the largest absolute JAX value) per quantity after the same step:
    ``params``, group ``weights``, ``adam_first_moment``, ``epoch_grad_sum``, ``epoch_loss_sum``."""
    mu = optax.tree_utils.tree_get(jax_state.opt_state, "mu")
    pairs = {
        "params": ([jax_state.params[name] for name in TABLES], [p.detach() for p in model.params]),
        "weights": ([jax_state.weights], [model.weights]),
        "adam_first_moment": ([mu[name] for name in TABLES],
                              [model.optimizer.state[p]["exp_avg"] for p in model.params]),
        "epoch_grad_sum": ([torch_order(jax_state.grad_sum, jax_state.params)], [model.grad_sum]),
        "epoch_loss_sum": ([jax_state.loss_sum], [model.loss_sum]),
    }
    out = {}
    for name, (reference, other) in pairs.items():
        reference = [np.asarray(x, np.float64) for x in reference]
        other = [np.asarray(x.numpy(), np.float64) for x in other]
        out[name] = {"max_abs_diff": max(float(np.max(np.abs(a - b))) for a, b in zip(reference, other, strict=True)),
                     "max_abs": max(float(np.max(np.abs(a))) for a in reference)}
    return out
