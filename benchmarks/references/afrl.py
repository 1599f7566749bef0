"""PyTorch reference of AFRL's training step (Algorithm 1 of Zhu et al., SIGIR 2024), written for the benchmarks only.

It mirrors :func:`jaxfair.methods.afrl.make_train_step` and must agree with it (``tests/test_torch_references.py``):
the same five updates in the same order, each player with its own ``torch.optim.Adam`` at
``config.train.learning_rate`` (optax's Adam defaults),

* C: ``mean_u sum_i -log q(a_i | z_i; C_i)`` on the stopped attribute embeddings ``z_i = E_i(u)`` (Eq. 10);
* E: ``mean_u sum_i [1/2 ||z_i||^2 - beta log q(a_i | z_i; C_i)]`` against the updated C (Eq. 13);
* D (``discriminator_steps`` times): ``mean_u sum_i -log q(a_i | z_0; D_i)`` on the stopped ``z_0 = F(u)``;
* F: ``mean_u ||z_0 - u||^2 - lambda mean_u sum_i -log q(a_i | z_0; D_i)`` against the updated D (Eq. 16, the
  ``"paper"`` adversary);
* G: BPR of ``<u*, v+> - <u*, v->`` with ``u* = G(z_0 (+) [(z_1 (+) ... (+) z_M) * s_u])`` on the updated, stopped
  encoders (Eqs. 17, 18; the dot-product scorer of PMF).

Networks are ``nn.Linear`` stacks with ReLU between layers (:mod:`jaxfair.methods.mlp`); the ``M`` heads of different
class counts share ``max_classes`` outputs with the absent classes' logits set to ``-1e9``, as jaxfair masks them.
It implements the default configuration (``adversary = "paper"``, no ablation, no residual G) and treats every row
and every label as weight 1 (no padding, no withheld labels).

:class:`TorchAFRL` starts from PyTorch's own initialisation (the timing in ``benchmarks/afrl_step.py``) or from a
jaxfair parameter pytree (the numerical check); its :meth:`~TorchAFRL.step` takes the requirement draw ``sensitive``
from the caller (the JAX step's ``jax.random.bernoulli(key, 0.5, (B, M))``) or draws it with ``torch.rand``.
PyTorch is imported when a model is built, so importing this module does not need it.
"""

from __future__ import annotations

import numpy as np

from jaxfair.methods.mlp import mlp_sizes

PLAYERS = ("C", "E", "D", "F", "G")  # the update order, as jaxfair.methods.afrl.PLAYERS


def _check_supported(config) -> None:
    unsupported = {"adversary": config.adversary != "paper", "aggregator_residual": config.aggregator_residual,
                   "use_attribute_embeddings": not config.use_attribute_embeddings,
                   "use_collaborative_embedding": not config.use_collaborative_embedding,
                   "confusion_on_all_users": config.confusion_on_all_users,
                   "weight_decay": config.train.weight_decay != 0}
    bad = [name for name, flag in unsupported.items() if flag]
    if bad:
        raise ValueError(f"the PyTorch AFRL reference implements the default configuration only; unsupported: {bad}")


class TorchAFRL:
    """AFRL's five players and their optimizers in PyTorch.

    Args:
      user_vecs: ``(U, d)`` frozen user embeddings; item_vecs: ``(I, d)``; labels: int ``(U, M)``;
        class_mask: bool ``(M, max_classes)`` (numpy or JAX arrays, e.g. the fields of
        :class:`jaxfair.methods.adversaries.AttributeData`).
      config: :class:`jaxfair.methods.afrl.Config`.
      params: a jaxfair AFRL parameter pytree to start from; None keeps PyTorch's default initialisation (seed it with
        ``torch.manual_seed`` before building).
    """

    def __init__(self, user_vecs, item_vecs, labels, class_mask, config, params=None):
        import torch

        _check_supported(config)
        self.torch, self.config = torch, config
        self.user_vecs = torch.tensor(np.asarray(user_vecs, np.float32))
        self.item_vecs = torch.tensor(np.asarray(item_vecs, np.float32))
        self.labels = torch.tensor(np.asarray(labels), dtype=torch.long)
        self.class_mask = torch.tensor(np.asarray(class_mask, bool))
        d = self.user_vecs.shape[1]
        m, width = self.class_mask.shape
        self.num_attributes = m

        def mlp(sizes):
            layers = []
            for a, b in zip(sizes[:-1], sizes[1:]):
                layers += [torch.nn.Linear(a, b), torch.nn.ReLU()]
            return torch.nn.Sequential(*layers[:-1])

        enc = mlp_sizes(d, config.hidden, d, config.encoder_layers)
        head = mlp_sizes(d, config.hidden, width, config.head_layers)
        self.players = {
            "C": torch.nn.ModuleList([mlp(head) for _ in range(m)]),
            "E": torch.nn.ModuleList([mlp(enc) for _ in range(m)]),
            "D": torch.nn.ModuleList([mlp(head) for _ in range(m)]),
            "F": mlp(enc),
            "G": mlp(mlp_sizes((m + 1) * d, config.hidden, d, config.aggregator_layers)),
        }
        if params is not None:
            self.load(params)
        self.optimizers = {k: torch.optim.Adam(v.parameters(), lr=config.train.learning_rate)
                           for k, v in self.players.items()}

    # conversion from / to jaxfair's layout: a JAX layer is {"w": (in, out), "b": (out,)}, stacks have a leading M

    @staticmethod
    def _linears(network):
        return [layer for layer in network if hasattr(layer, "weight")]

    def _networks(self, name):
        """``[(index into the JAX stack or None, the nn.Sequential)]`` of one player."""
        player = self.players[name]
        return [(None, player)] if name in ("F", "G") else list(enumerate(player))

    def load(self, params: dict) -> None:
        """Copy a jaxfair AFRL parameter pytree into the players."""
        torch = self.torch
        with torch.no_grad():
            for name in PLAYERS:
                for index, network in self._networks(name):
                    for layer, jax_layer in zip(self._linears(network), params[name], strict=True):
                        w, b = (np.asarray(jax_layer[k], np.float32) for k in ("w", "b"))
                        if index is not None:
                            w, b = w[index], b[index]
                        layer.weight.copy_(torch.tensor(np.ascontiguousarray(w.T)))
                        layer.bias.copy_(torch.tensor(b))

    def _export(self, tensor_of) -> dict:
        out = {}
        for name in PLAYERS:
            networks = self._networks(name)
            layers = []
            for j in range(len(self._linears(networks[0][1]))):
                pairs = [(tensor_of(self._linears(net)[j].weight).T, tensor_of(self._linears(net)[j].bias))
                         for _, net in networks]
                if name in ("F", "G"):
                    layers.append({"w": pairs[0][0], "b": pairs[0][1]})
                else:
                    layers.append({"w": np.stack([w for w, _ in pairs]), "b": np.stack([b for _, b in pairs])})
            out[name] = layers
        return out

    def exported_params(self) -> dict:
        """The parameters as a jaxfair AFRL pytree (numpy)."""
        return self._export(lambda p: p.detach().numpy())

    def exported_first_moments(self) -> dict:
        """Every player's Adam first moment in the same layout (zeros before its first step)."""
        def moment(p):
            state = self._adam_state(p)
            return state["exp_avg"].numpy() if state else np.zeros(tuple(p.shape), np.float32)

        return self._export(moment)

    def _adam_state(self, p) -> dict:
        for optimizer in self.optimizers.values():
            if p in optimizer.state:
                return optimizer.state[p]
        return {}

    # the step

    def _nll(self, heads, zs, labels):
        """``sum_i -log q(a_i | zs[i]; heads[i])`` per row."""
        total = 0.0
        for i, h in enumerate(heads):
            logits = h(zs[i]).masked_fill(~self.class_mask[i], -1e9)
            total = total + self.torch.nn.functional.cross_entropy(logits, labels[:, i], reduction="none")
        return total

    def _update(self, name, loss):
        self.optimizers[name].zero_grad()
        loss.backward()
        self.optimizers[name].step()

    def step(self, batch: dict, sensitive=None) -> dict:
        """One step of Algorithm 1 on ``batch`` (``user``, ``pos``, ``neg`` integer tensors).

        ``sensitive``: bool ``(B, M)`` tensor of the rows' requirements; None draws it uniformly with ``torch.rand``.
        Returns the step's losses under jaxfair's metric names (detached tensors).
        """
        torch, config, players, m = self.torch, self.config, self.players, self.num_attributes
        users = batch["user"].long()
        u, labels = self.user_vecs[users], self.labels[users]
        if sensitive is None:
            sensitive = torch.rand(u.shape[0], m) < 0.5
        with torch.no_grad():
            z = [e(u) for e in players["E"]]
        loss_c = self._nll(players["C"], z, labels).mean()
        self._update("C", loss_c)
        z = [e(u) for e in players["E"]]
        compression = sum(0.5 * (zi**2).sum(-1) for zi in z)
        loss_e = (compression + config.beta * self._nll(players["C"], z, labels)).mean()
        self._update("E", loss_e)
        with torch.no_grad():
            z0 = players["F"](u)
        for _ in range(config.discriminator_steps):
            loss_d = self._nll(players["D"], [z0] * m, labels).mean()
            self._update("D", loss_d)
        z0 = players["F"](u)
        loss_f = ((z0 - u) ** 2).sum(-1).mean() - config.lam * self._nll(players["D"], [z0] * m, labels).mean()
        self._update("F", loss_f)
        with torch.no_grad():
            z0 = players["F"](u)
            z = [e(u) for e in players["E"]]
            kept = [zi * (~sensitive[:, j : j + 1]).float() for j, zi in enumerate(z)]
            x = torch.cat([z0] + kept, dim=1)
        u_star = players["G"](x)
        pos, neg = self.item_vecs[batch["pos"].long()], self.item_vecs[batch["neg"].long()]
        diff = (u_star * pos).sum(-1) - (u_star * neg).sum(-1)
        loss_g = -torch.nn.functional.logsigmoid(diff).mean()
        self._update("G", loss_g)
        return {"loss": loss_g.detach(), "loss_C": loss_c.detach(), "loss_E": loss_e.detach(),
                "loss_D": loss_d.detach(), "loss_F": loss_f.detach()}
