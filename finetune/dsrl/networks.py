"""Old names of the networks in :mod:`dpft.finetune.common.networks`.

Kept because SB3 pickles the policy class by name into every ``model.zip``: checkpoints of DSRL
runs made before the networks were shared name ``dpft.finetune.dsrl.networks.DSRLPolicy``.
"""

from dpft.finetune.common.networks import EnsembleCritic as DSRLCritic
from dpft.finetune.common.networks import LayerNormSACPolicy as DSRLPolicy

__all__ = ["DSRLCritic", "DSRLPolicy"]
