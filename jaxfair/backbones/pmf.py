"""PMF: probabilistic matrix factorisation (Salakhutdinov & Mnih, "Probabilistic Matrix Factorization", NIPS 2007),
trained on implicit feedback with BPR (Rendle et al., "BPR: Bayesian Personalized Ranking from Implicit Feedback",
UAI 2009).

Parameters: user table ``P`` ``(U, d)`` and item table ``Q`` ``(I, d)``. Score ``R(u, v) = <u, v>``. The Gaussian
priors of PMF become the L2 term ``l2 * (||p_u||^2 + ||q_i||^2 + ||q_j||^2)`` on the rows a BPR triple
``(u, i, j)`` uses.
"""

from __future__ import annotations

import dataclasses

from jaxfair.backbones.base import Backbone, dot_score
from jaxfair.backbones.common import check_dim_l2, table_backbone


@dataclasses.dataclass(frozen=True)
class Config:
    """PMF hyper-parameters.

    Attributes:
      dim: embedding size ``d``.
      l2: weight of the squared L2 norm of the user/positive/negative rows of a batch (small, 1e-6, so it only
        keeps rarely-seen rows from drifting).
    """

    dim: int = 64
    l2: float = 1e-6

    def __post_init__(self):
        check_dim_l2(self.dim, self.l2)


def backbone(config: Config = Config()) -> Backbone:
    """Build PMF's pure functions.

    Args:
      config: the hyper-parameters.

    Returns:
      A :class:`Backbone`; params are ``{"user": (U, d), "item": (I, d)}``, context is empty and ``make_epoch``
      yields ``user``/``pos``/``neg``/``weight`` batches of shape ``(num_batches, B)``.
    """

    def score(params, user_vecs, item_vecs):
        del params
        return dot_score(user_vecs, item_vecs)

    return table_backbone("pmf", config.dim, config.l2, score)
