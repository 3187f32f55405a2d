"""The paper's toy experiment (section 4.1, Tables 1 and 5, Figures 2 and 4).

Two copies of one 1-D diffusion model trained on a five-mode Gaussian mixture generate the
25-mode product distribution; a small MLP discriminator guides them to a five-mode joint
target, either inside the base models' support (IND) or outside it (OOD).
"""

from mmdisco.toy.gmm import GMM, base_target, ind_target, ood_target
from mmdisco.toy.metrics import evaluate, mode_balance, mode_precision, nll
from mmdisco.toy.models import BaseMLP, MLPDiscriminator, ToyBaseModel

__all__ = [
    "GMM",
    "BaseMLP",
    "MLPDiscriminator",
    "ToyBaseModel",
    "base_target",
    "evaluate",
    "ind_target",
    "mode_balance",
    "mode_precision",
    "nll",
    "ood_target",
]
