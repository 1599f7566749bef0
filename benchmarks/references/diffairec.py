"""PyTorch reference of DiffRec's and DifFaiRec's training step and full-ranking scorer, written for the benchmarks
only.

It mirrors :func:`jaxfair.backbones.diffusion.make_train_step` / :func:`jaxfair.backbones.diffusion.make_scorer`
(DiffRec, ``method is None``) and :func:`jaxfair.methods.diffairec.make_train_step` /
:func:`jaxfair.methods.diffairec.make_scorer` (DifFaiRec), and must agree with them (``tests/test_torch_references.py``;
``benchmarks/diffairec_step.py`` records the comparison under ``checks``): the same math with ``nn.Linear`` layers
(DiffRec's DNN: timestep embedding, tanh hidden layers), the ``"linear-var"`` schedule and ``x0`` prediction, input
dropout, SNR reweighting divided by ``T p(t)``, the importance law and loss history kept as tensors and updated
vectorised as jaxfair does (one batch mean per timestep, a ring of ``history``), DifFaiRec's user latent, attention
counterfactual (condition-only or input swap) and one batched denoiser pass over the factual and counterfactual rows,
``torch.optim.Adam`` (optax's defaults, coupled L2 ``weight_decay`` as :func:`jaxfair.training.optim.make`); the
scorer runs the deterministic reverse process, DifFaiRec's output averaged over the serving conditions.

:class:`TorchDiffusion` is loaded from a JAX :class:`~jaxfair.backbones.diffusion.DiffusionState` (parameters, Adam
moments and count, loss history); :meth:`TorchDiffusion.step` takes the JAX step's random draws when given
(:func:`torch_draws`), so one step of each can be compared exactly. PyTorch is imported when a model is built, so
importing this module does not need it.
"""

from __future__ import annotations

import functools
import math

import numpy as np
import optax

from jaxfair.backbones import diffusion


def linear_var_schedule(dc: diffusion.Config) -> dict:
    """DiffRec's ``"linear-var"`` schedule, derived here independently of jaxfair (float64 numpy): ``1 - abar_t``
    linear, ``beta_t = 1 - abar_t / abar_{t-1}`` (capped at 0.999), the posterior-mean coefficients and the SNR."""
    variance = np.linspace(dc.noise_scale * dc.noise_min, dc.noise_scale * dc.noise_max, dc.steps, dtype=np.float64)
    alpha_bar = 1.0 - variance
    betas = [1.0 - alpha_bar[0]] + [min(1.0 - alpha_bar[i] / alpha_bar[i - 1], 0.999) for i in range(1, dc.steps)]
    betas = np.array(betas)
    abar = np.cumprod(1.0 - betas)
    abar_prev = np.append(1.0, abar[:-1])
    return {"abar": abar, "coef_x0": betas * np.sqrt(abar_prev) / (1.0 - abar),
            "coef_xt": (1.0 - abar_prev) * np.sqrt(1.0 - betas) / (1.0 - abar), "snr": abar / (1.0 - abar)}


def tree_get(tree, path):
    """The node of a nested dict / list at ``path`` (a tuple of keys and indices)."""
    return functools.reduce(lambda node, key: node[key], path, tree)


class TorchDiffusion:
    """DiffRec's (``method is None``) or DifFaiRec's step and full-ranking scorer in PyTorch, loaded from a JAX
    :class:`~jaxfair.backbones.diffusion.DiffusionState` (parameters, Adam moments and step count, loss history).

    Parameters are ``nn.Linear`` layers (weights stored ``(out, in)``: JAX's transposed) plus the attention's query
    and key matrices in JAX's layout; :attr:`paths` maps each to its place in the JAX pytree.
    """

    def __init__(self, state: diffusion.DiffusionState, dc: diffusion.Config, method, interactions, groups, tokens,
                 threads: int, learning_rate: float, weight_decay: float = 0.0):
        import torch

        if dc.schedule != "linear-var" or dc.mean_type != "x0":
            raise ValueError("the PyTorch reference implements the linear-var schedule and x0 prediction only")
        self.torch, self.nn, self.F = torch, torch.nn, torch.nn.functional
        self.dc, self.method, self.threads = dc, method, threads
        torch.set_num_threads(threads)
        torch.manual_seed(0)
        nn = torch.nn
        f32 = lambda x: torch.tensor(np.asarray(x, np.float32))  # noqa: E731
        self.schedule = {k: f32(v) for k, v in linear_var_schedule(dc).items()}
        half = dc.time_dim // 2
        self.freqs = torch.exp(-math.log(10000.0) * torch.arange(half, dtype=torch.float32) / half)
        self.x, self.groups = f32(interactions), torch.tensor(np.asarray(groups)).long()
        self.tokens = f32(tokens)
        items = self.x.shape[1]
        cond = 0 if method is None else method.latent_dim
        sizes = (items + dc.time_dim + cond, *dc.hidden, items)
        self.time = nn.Linear(dc.time_dim, dc.time_dim)
        self.layers = nn.ModuleList(nn.Linear(m, n) for m, n in zip(sizes[:-1], sizes[1:]))
        den = () if method is None else ("denoiser",)  # DiffRec's parameters are the denoiser's
        self.paths = [((*den, "time", "w"), self.time.weight), ((*den, "time", "b"), self.time.bias)]
        for i, layer in enumerate(self.layers):
            self.paths += [((*den, "layers", i, "w"), layer.weight), ((*den, "layers", i, "b"), layer.bias)]
        if method is not None:
            d = method.latent_dim
            self.encoder = nn.Linear(items, d)
            self.query, self.key = nn.Parameter(torch.empty(d, d)), nn.Parameter(torch.empty(d, d))
            self.paths += [(("counterfactual", "encoder", "w"), self.encoder.weight),
                           (("counterfactual", "encoder", "b"), self.encoder.bias),
                           (("counterfactual", "query"), self.query), (("counterfactual", "key"), self.key)]
        self.params = [p for _, p in self.paths]
        self.optimizer = torch.optim.Adam(self.params, lr=learning_rate, eps=1e-8, weight_decay=weight_decay)
        self.load(state)

    # conversion from / to JAX: an ``nn.Linear`` weight is the transposed JAX ``w``; everything else is as in JAX

    def _transposed(self, path) -> bool:
        return path[-1] == "w"

    def _to_torch(self, value, path):
        value = np.asarray(value, np.float32)
        return self.torch.tensor(np.ascontiguousarray(value.T if self._transposed(path) else value))

    def _to_jax_layout(self, tensor, path):
        value = tensor.detach().numpy()
        return value.T if self._transposed(path) else value

    def load(self, state: diffusion.DiffusionState):
        torch = self.torch
        with torch.no_grad():
            for path, p in self.paths:
                p.copy_(self._to_torch(tree_get(state.params, path), path))
        count = int(optax.tree_utils.tree_get(state.opt_state, "count"))
        self.optimizer.state.clear()
        if count:
            mu = optax.tree_utils.tree_get(state.opt_state, "mu")
            nu = optax.tree_utils.tree_get(state.opt_state, "nu")
            for path, p in self.paths:
                self.optimizer.state[p] = {"step": torch.tensor(float(count)),
                                           "exp_avg": self._to_torch(tree_get(mu, path), path),
                                           "exp_avg_sq": self._to_torch(tree_get(nu, path), path)}
        self.history = torch.tensor(np.asarray(state.sampler.losses, np.float32))
        self.history_counts = torch.tensor(np.asarray(state.sampler.counts)).long()

    def exported(self) -> dict:
        """Parameters and Adam first moments in JAX's layout, keyed by the JAX path; and the loss history."""
        return {"params": {path: self._to_jax_layout(p, path) for path, p in self.paths},
                "adam_first_moment": {path: self._to_jax_layout(self.optimizer.state[p]["exp_avg"], path)
                                      for path, p in self.paths},
                "loss_history": {("losses",): self.history.numpy(), ("counts",): self.history_counts.numpy()}}

    # the model

    def denoise(self, x_t, t, cond=None):
        emb = self.time(self.torch.cat([self.torch.cos(t.float()[:, None] * self.freqs),
                                        self.torch.sin(t.float()[:, None] * self.freqs)], dim=-1))
        h = self.torch.cat([x_t, emb] if cond is None else [x_t, emb, cond], dim=-1)
        for layer in self.layers[:-1]:
            h = self.torch.tanh(layer(h))
        return self.layers[-1](h)

    def user_latent(self, x):
        return self.encoder(x / x.norm(dim=-1, keepdim=True).clamp_min(1e-12))

    def _attention(self, z):
        torch = self.torch
        token_latents = self.F.linear(self.tokens, self.encoder.weight)  # (G, k, d), no bias
        logits = torch.einsum("bd,gkd->bgk", z @ self.query, token_latents @ self.key) / math.sqrt(z.shape[-1])
        return torch.softmax(logits, dim=-1), token_latents

    def conditions(self, z, own):
        """``C(z_u, g) = z_u - o_{g_u}(z_u) + o_g(z_u)`` for every group ``g``: ``(G, B, d)``."""
        torch = self.torch
        weights, token_latents = self._attention(z)
        readout = torch.einsum("bgk,gkd->bgd", weights, token_latents)
        own_part = readout[torch.arange(z.shape[0]), own]  # (B, d)
        return (z[:, None, :] - own_part[:, None, :] + readout).transpose(0, 1)

    def input_shifts(self, x, z, own):
        """``||x_u|| (r_g - r_{g_u})`` for every group ``g``, ``r_g`` the attention-weighted tokens: ``(G, B, I)``."""
        torch = self.torch
        readout = torch.einsum("bgk,gki->bgi", self._attention(z)[0], self.tokens)
        own_part = readout[torch.arange(z.shape[0]), own]
        return (x.norm(dim=-1, keepdim=True)[:, None, :] * (readout - own_part[:, None, :])).transpose(0, 1)

    def law(self):
        """``p(t)`` ``(T,)``: uniform until every timestep has a full loss history, then ``sqrt(E[L^2])``-shaped."""
        torch, dc = self.torch, self.dc
        uniform = torch.full((dc.steps,), 1.0 / dc.steps)
        if not dc.importance_sampling:
            return uniform
        root = (self.history ** 2).mean(dim=1).sqrt()
        if bool((self.history_counts >= dc.history).all()) and float(root.sum()) > 0:
            return (1.0 - dc.floor) * root / root.sum().clamp_min(1e-12) + dc.floor / dc.steps
        return uniform

    def record(self, t, losses, weight):
        """Push each present timestep's weighted batch-mean loss into its ring of ``history`` entries."""
        torch, T = self.torch, self.dc.steps
        sums = torch.zeros(T).index_add_(0, t, losses * weight)
        counts = torch.zeros(T).index_add_(0, t, weight)
        present = counts > 0
        pushed = self.history.clone()
        pushed[torch.arange(T), self.history_counts % self.dc.history] = sums / counts.clamp_min(1e-12)
        self.history = torch.where(present[:, None], pushed, self.history)
        self.history_counts = self.history_counts + present.long()

    def step(self, batch, draws=None):
        """One training step on ``batch`` (``users`` long, ``weight`` float tensors). ``draws``: the random draws
        (``t``, ``noise``, ``keep``, ``target_group`` tensors) to use instead of drawing them here."""
        torch, dc, method = self.torch, self.dc, self.method
        users, weight = batch["users"], batch["weight"]
        x0 = self.x[users]
        size = x0.shape[0]
        law = self.law()
        if draws is None:
            t = torch.multinomial(law, size, replacement=True)
            noise = torch.randn_like(x0)
            keep = torch.rand_like(x0) < 1.0 - dc.dropout
        else:
            t, noise, keep = draws["t"], draws["noise"], draws["keep"]
        p_t = law[t]
        abar = self.schedule["abar"][t][:, None]
        x_t = abar.sqrt() * x0 + (1.0 - abar).sqrt() * noise
        dropped = torch.where(keep, x_t / (1.0 - dc.dropout), 0.0)
        snr = self.schedule["snr"]
        reweight = torch.where(t == 0, 1.0, snr[(t - 1).clamp_min(0)] - snr[t]) if dc.reweight else torch.ones(size)
        scale = reweight / (dc.steps * p_t)
        total = weight.sum().clamp_min(1.0)
        metrics = {}
        if method is None:
            output = self.denoise(dropped, t)
            mse = ((x0 - output) ** 2).mean(dim=-1)
            loss = (scale * mse * weight).sum() / total
        else:
            own = self.groups[users]
            if draws is None:
                target_group = (own + torch.randint(1, self.tokens.shape[0], (size,))) % self.tokens.shape[0]
            else:
                target_group = draws["target_group"]
            z = self.user_latent(x0)
            rows = torch.arange(size)
            z_cf = self.conditions(z, own)[target_group, rows]
            dropped_cf = dropped
            if method.swap == "input":
                x_t_cf = x_t + abar.sqrt() * self.input_shifts(x0, z, own)[target_group, rows].detach()
                dropped_cf = torch.where(keep, x_t_cf / (1.0 - dc.dropout), 0.0)
            outputs = self.denoise(torch.cat([dropped, dropped_cf]), torch.cat([t, t]), torch.cat([z, z_cf]))
            factual, counter = outputs.chunk(2)
            mse, mse_cf = ((x0 - factual) ** 2).mean(dim=-1), ((x0 - counter) ** 2).mean(dim=-1)
            loss = (scale * (mse + method.counterfactual_weight * mse_cf) * weight).sum() / total
            with torch.no_grad():
                metrics["mse_cf"] = (mse_cf * weight).sum() / total
                metrics["agreement"] = (((factual - counter) ** 2).mean(dim=-1) * weight).sum() / total
        self.optimizer.zero_grad()
        loss.backward()
        with torch.no_grad():
            metrics.update(loss=loss.detach(), mse=(mse * weight).sum() / total,
                           grad_norm=torch.stack([p.grad.pow(2).sum() for p in self.params]).sum().sqrt())
        self.optimizer.step()
        with torch.no_grad():
            self.record(t, mse.detach(), weight)
        return metrics

    def scores(self, eval_batch: int):
        """The (U, I) scores of every user: the reverse process in batches of ``eval_batch`` users (the last one
        short), DifFaiRec's output averaged over the serving conditions (one batched pass) at every step."""
        torch, dc, method = self.torch, self.dc, self.method
        coef_x0, coef_xt = self.schedule["coef_x0"], self.schedule["coef_xt"]
        out = []
        with torch.no_grad():
            for start in range(0, self.x.shape[0], eval_batch):
                x = self.x[start:start + eval_batch]
                size = x.shape[0]
                shifts = None
                if method is None:
                    cond, copies = None, 1
                else:
                    z = self.user_latent(x)
                    own = self.groups[start:start + size]
                    cond = z[None] if method.serve == "factual" else self.conditions(z, own)
                    copies = cond.shape[0]
                    cond = cond.reshape(copies * size, -1)
                    if method.serve == "average" and method.swap == "input":
                        shifts = self.input_shifts(x, z, own).reshape(copies * size, -1)
                x_t = x
                for step in range(dc.reverse_steps - 1, -1, -1):
                    t = torch.full((copies * size,), step, dtype=torch.long)
                    inputs = x_t if copies == 1 else x_t.repeat(copies, 1)
                    if shifts is not None:
                        inputs = inputs + self.schedule["abar"][step].sqrt() * shifts
                    x0_hat = self.denoise(inputs, t, cond).view(copies, size, -1).mean(dim=0)
                    x_t = coef_x0[step] * x0_hat + coef_xt[step] * x_t
                out.append(x_t)
        return torch.cat(out)

    def prepare(self):
        """Set this variant's thread count (``torch.set_num_threads`` is process-wide)."""
        self.torch.set_num_threads(self.threads)

    def step_variant(self, batches):
        """``(prepare, call(r))``: one step on batch ``r`` (cycling)."""
        return self.prepare, lambda r: self.step(batches[r % len(batches)])

    def infer_variant(self, eval_batch):
        """``(prepare, call(r))``: one full-ranking inference pass."""
        return self.prepare, lambda r: self.scores(eval_batch)


def torch_batches(batches) -> list[dict]:
    """Stacked numpy user batches (``users``, ``weight``; leading axis the batch) as one dict of PyTorch tensors per
    batch."""
    import torch

    return [{"users": torch.tensor(batches["users"][i]).long(), "weight": torch.tensor(batches["weight"][i])}
            for i in range(len(batches["users"]))]


def torch_draws(draws: dict) -> dict:
    """A JAX step's random draws (numpy ``t``, ``noise``, ``keep``, ``target_group``) as the tensors
    :meth:`TorchDiffusion.step` takes."""
    import torch

    return {k: torch.tensor(v).long() if k in ("t", "target_group") else torch.tensor(v) for k, v in draws.items()}
