"""PyTorch reference of Cofair's training step, written for the benchmarks only.

It mirrors :func:`jaxfair.methods.cofair.make_train_step` and must agree with it (``tests/test_torch_references.py``;
``benchmarks/cofair_step.py`` records the largest difference of the metrics as ``check_max_abs_diff_torch_vs_jax``).
Per-row, as the public Cofair code: every BPR row runs the filter (shared layer, a Python loop over the ``T``
adapter ``nn.Linear`` layers, output layer, LeakyReLU; optionally residual) and the discriminator ``D`` (ReLU MLP).
One step is, in order: ``discriminator_steps`` Adam steps of ``D`` on the detached level embeddings, then one Adam
step of the filter on ``mean_t (BPR_t - lambda_t L_t) + beta R`` against the updated ``D``, with the adaptive
lambdas of Eq. 10 and the monotonicity regulariser; the adversaries ``"paper"``, ``"capped"`` (each row's attacker
loss capped at ``-log prior[a_u]``) and ``"mean_gap"`` (``+ lambda_t S_t``, the between-class share of the level's
variance over the batch's rows); with ``exposure_weight > 0`` also ``gamma lambda_t X_t``, the soft top-k exposure gap
(:mod:`jaxfair.methods.soft_exposure`) computed with ``topk``, ``gather`` and ``scatter_add`` per level, each user of
the batch counted once.

Every row is taken with weight 1 and every label as usable (no padding, no withheld labels). :class:`TorchCofair`
starts from a jaxfair parameter pytree (:func:`jaxfair.methods.cofair.init_state`'s ``params``); PyTorch is imported
when it is built, so importing this module does not need it.
"""

from __future__ import annotations

import numpy as np

from jaxfair.methods import cofair


def torch_batches(batches: list[dict]) -> list[dict]:
    """Numpy BPR batches (``user``, ``pos``, ``neg``, ``weight``) as PyTorch tensors (indices as ``long``)."""
    import torch

    return [{k: torch.tensor(v).long() if k != "weight" else torch.tensor(v) for k, v in b.items()} for b in batches]


class TorchCofair:
    """The filter and ``D`` with their Adam optimizers (the filter's at ``config.train.learning_rate``, D's at
    ``config.discriminator_learning_rate``).

    Args:
      init_params: jaxfair's ``{"filter": ..., "D": ...}`` parameters to start from.
      user_vecs: ``(U, d)``; item_vecs: ``(I, d)``; labels: int ``(U,)`` (numpy).
      config: :class:`jaxfair.methods.cofair.Config`.
      exclude: bool ``(U, I)``, the items the exposure term masks (needed when ``config.exposure_weight > 0``).
    """

    def __init__(self, init_params, user_vecs, item_vecs, labels, config, exclude=None):
        import torch

        if config.adversary not in ("paper", "capped", "mean_gap"):
            raise ValueError(f"the PyTorch Cofair reference implements the paper, capped and mean_gap adversaries, "
                             f"not {config.adversary!r}")
        if config.exposure_weight > 0 and exclude is None:
            raise ValueError("exposure_weight > 0 needs exclude (the items the exposure term masks)")
        self.torch, self.config = torch, config
        nn = torch.nn
        levels = config.levels

        def linear(p, w=None, b=None):
            layer = nn.Linear(*np.shape(p["w"] if w is None else w))
            with torch.no_grad():  # JAX stores (in, out); torch (out, in)
                layer.weight.copy_(torch.tensor(np.asarray(p["w"] if w is None else w)).T)
                layer.bias.copy_(torch.tensor(np.asarray(p["b"] if b is None else b)))
            return layer

        fp, dp = init_params["filter"], init_params["D"]
        self.shared = linear(fp["shared"])
        self.adapters = nn.ModuleList(linear(None, fp["adapters"]["w"][t], fp["adapters"]["b"][t])
                                      for t in range(levels))
        self.out = linear(fp["out"])
        self.filter = nn.ModuleList([self.shared, self.adapters, self.out])
        disc_layers = []
        for layer in dp:  # D as jaxfair's MLP: ReLU between linear layers
            disc_layers += [linear(layer), nn.ReLU()]
        self.disc = nn.Sequential(*disc_layers[:-1])
        self.opt_f = torch.optim.Adam(self.filter.parameters(), lr=config.train.learning_rate)
        self.opt_d = torch.optim.Adam(self.disc.parameters(), lr=config.discriminator_learning_rate)
        self.filter_params = list(self.filter.parameters())

        labels = np.asarray(labels)
        self.u_all, self.v_all = torch.tensor(np.asarray(user_vecs)), torch.tensor(np.asarray(item_vecs))
        self.a_all = torch.tensor(labels, dtype=torch.long)
        self.num_classes = int(np.max(labels)) + 1
        prior = np.bincount(labels, minlength=self.num_classes) / len(labels)
        self.chance_loss = -torch.log(torch.tensor(prior, dtype=torch.float32))  # the capped adversary's cap
        self.excl_all = None if exclude is None else torch.tensor(np.asarray(exclude))
        centred = self.v_all - self.v_all.mean(0)
        self.item_cov = centred.T @ centred / self.v_all.shape[0]

    def exported_params(self) -> dict:
        """The parameters as jaxfair's ``{"filter": ..., "D": ...}`` pytree (numpy)."""
        layer = lambda m: {"w": m.weight.detach().numpy().T, "b": m.bias.detach().numpy()}  # noqa: E731
        adapters = [layer(a) for a in self.adapters]
        return {"filter": {"shared": layer(self.shared), "out": layer(self.out),
                           "adapters": {"w": np.stack([a["w"] for a in adapters]),
                                        "b": np.stack([a["b"] for a in adapters])}},
                "D": [layer(m) for m in self.disc if hasattr(m, "weight")]}

    # the pieces of the filter's objective

    def level_embeddings(self, u):
        """``(B, d) -> (T, B, d)``: levels 1..T, one forward pass of the filter."""
        F = self.torch.nn.functional
        s = self.shared(u)
        levels_out = self.torch.stack([self.out(F.leaky_relu(self.torch.cat([s, adapter(u)], dim=-1),
                                                             self.config.negative_slope))
                                       for adapter in self.adapters])
        return levels_out + u if self.config.residual else levels_out

    def attacker(self, emb, a):
        """D's cross-entropy per level and row: ``(T, B, d), (B,) -> (T, B)``."""
        logits = self.disc(emb)
        return self.torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), a.repeat(emb.shape[0]),
                                                      reduction="none").reshape(emb.shape[:2])

    def between_class_share(self, emb, a):
        """``(T, B, d), (B,) -> (T,)``; every row has weight 1."""
        torch, num_classes = self.torch, self.num_classes
        onehot = torch.nn.functional.one_hot(a, num_classes).to(emb.dtype)  # (B, K)
        counts = onehot.sum(0)
        share = counts / counts.sum()
        class_means = torch.einsum("bk,tbd->tkd", onehot, emb) / counts.clamp(min=1e-12)[None, :, None]
        mean = torch.einsum("k,tkd->td", share, class_means)
        between = torch.einsum("k,tk->t", share, ((class_means - mean[:, None]) ** 2).sum(-1))
        total = ((emb - mean[:, None]) ** 2).sum(-1).mean(-1)
        return between / total.clamp(min=1e-12)

    def exposure_gap(self, emb, users, a):
        """``(T, B, d) -> (T,)``: the soft top-k exposure JS divergence between the classes, each user once."""
        torch, config, num_classes, v_all = self.torch, self.config, self.num_classes, self.v_all
        k, tau, m = config.exposure_k, config.exposure_temperature, max(config.exposure_candidates,
                                                                         config.exposure_k + 1)
        excl = self.excl_all[users]  # (B, I)
        with torch.no_grad():
            fixed = emb.detach()
            top, items = (fixed @ v_all.T).masked_fill(excl, float("-inf")).topk(m, dim=-1)  # (T, B, M)
            theta = 0.5 * (top[..., k - 1] + top[..., k])
            spread = torch.einsum("tbd,de,tbe->tb", fixed, self.item_cov, fixed).clamp(min=0).sqrt() + 1e-6
        chosen = (emb[:, :, None, :] * v_all[items]).sum(-1)
        member = torch.sigmoid((chosen - theta[..., None]) / (tau * spread[..., None]))
        member = member.masked_fill(torch.gather(excl.expand(emb.shape[0], -1, -1), 2, items), 0.0)
        present = 1.0 / torch.bincount(users)[users].to(emb.dtype)  # every row's user once in all
        weighted = torch.nn.functional.one_hot(a, num_classes).to(emb.dtype) * present[:, None]  # (B, K)
        pairs = [(g, h) for g in range(num_classes) for h in range(g + 1, num_classes)]
        gaps = []
        for t in range(emb.shape[0]):
            src = (weighted.T[:, :, None] * member[t][None]).reshape(num_classes, -1)  # (K, B * M)
            index = items[t].reshape(1, -1).expand(num_classes, -1)
            exposure = torch.zeros(num_classes, v_all.shape[0]).scatter_add(1, index, src) + 1e-8
            dist = exposure / exposure.sum(-1, keepdim=True)
            js = [0.5 * (dist[g] * torch.log2(dist[g] / (0.5 * (dist[g] + dist[h])))).sum()
                  + 0.5 * (dist[h] * torch.log2(dist[h] / (0.5 * (dist[g] + dist[h])))).sum() for g, h in pairs]
            gaps.append(torch.stack(js).mean())
        return torch.stack(gaps)

    # the step

    def step(self, batch: dict) -> dict:
        """One step on ``batch`` (``user``, ``pos``, ``neg`` long tensors); the metrics under jaxfair's names, as
        numpy arrays."""
        torch, config, levels = self.torch, self.config, self.config.levels
        F = torch.nn.functional
        u, a = self.u_all[batch["user"]], self.a_all[batch["user"]]
        pos, neg = self.v_all[batch["pos"]], self.v_all[batch["neg"]]
        emb = self.level_embeddings(u)  # (T, B, d), one forward pass of the filter
        for _ in range(config.discriminator_steps):  # D first, on the detached level embeddings
            self.opt_d.zero_grad()
            loss_d = self.attacker(emb.detach(), a).mean(-1).mean()
            loss_d.backward()
            self.opt_d.step()
        losses = self.attacker(emb, a)  # against the updated D
        if config.adversary == "capped":
            losses = torch.minimum(losses, self.chance_loss[a])
        level_losses = losses.mean(-1)
        with torch.no_grad():
            lambdas = torch.empty(levels)
            lambdas[0] = config.lambda0
            for t in range(1, levels):
                lambdas[t] = lambdas[t - 1] + config.alpha * (1.0 - (level_losses[t] - level_losses[t - 1]))
        bpr = -F.logsigmoid((emb * pos).sum(-1) - (emb * neg).sum(-1)).mean(-1)
        if levels > 1:
            reg = torch.clamp(F.softplus(losses[:-1] - losses[1:]) - cofair.LOG2, min=0.0).mean(-1).mean()
        else:
            reg = torch.zeros(())
        if config.adversary == "mean_gap":
            adversarial = self.between_class_share(emb, a)
        else:
            adversarial = -level_losses
        gap = torch.zeros(levels)  # reported as 0 when the term is off, as the JAX step does
        if config.exposure_weight > 0:
            gap = self.exposure_gap(emb, batch["user"], a)
            adversarial = adversarial + config.exposure_weight * gap
        loss = (bpr + lambdas * adversarial).mean() + config.beta * reg
        self.opt_f.zero_grad()
        loss.backward(inputs=self.filter_params)
        self.opt_f.step()
        return {"bpr": bpr.detach().numpy(), "attacker_loss": level_losses.detach().numpy(),
                "lambda": lambdas.numpy(), "reg": reg.detach().numpy(), "loss": loss.detach().numpy(),
                "discriminator_loss": loss_d.detach().numpy(), "exposure_gap": gap.detach().numpy()}
