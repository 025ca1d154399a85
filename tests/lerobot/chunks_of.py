"""LeRobot's chunks for a saved folder, loaded the way a LeRobot user loads it (inside a
LeRobot environment; the live round trip of ``tests/test_lerobot_live.py`` calls it)::

    python tests/lerobot/chunks_of.py FOLDER INPUTS.safetensors OUT.safetensors

``INPUTS`` holds ``obs`` ``[B, n_obs_steps, D]`` and ``noise`` ``[B, horizon, A]``; ``OUT`` gets
``chunk`` ``[B, n_action_steps, A]`` in environment units.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
from lerobot.policies.diffusion.modeling_diffusion import DiffusionPolicy
from make_references import NEW, chunks
from safetensors.torch import load_file, save_file


def main() -> None:
    folder, inputs, out = Path(sys.argv[1]), load_file(sys.argv[2]), sys.argv[3]
    policy = DiffusionPolicy.from_pretrained(folder).eval()
    if NEW:
        from lerobot.processor import PolicyProcessorPipeline
        from lerobot.processor.converters import policy_action_to_transition, transition_to_policy_action

        pre = PolicyProcessorPipeline.from_pretrained(folder, config_filename="policy_preprocessor.json")
        post = PolicyProcessorPipeline.from_pretrained(
            folder, config_filename="policy_postprocessor.json",
            to_transition=policy_action_to_transition, to_output=transition_to_policy_action,
        )  # fmt: skip

        def normalize(batch):
            return {k: v for k, v in pre(batch).items() if k in batch}

        unnormalize = post
    else:
        normalize = policy.normalize_inputs

        def unnormalize(actions):
            return policy.unnormalize_outputs({"action": actions})["action"]

    chunk = chunks(policy, policy.config, normalize, unnormalize, inputs["obs"], inputs["noise"])
    save_file({"chunk": torch.as_tensor(chunk).contiguous()}, out)


if __name__ == "__main__":
    main()
