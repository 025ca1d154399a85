"""Fine-tuning a frozen or trainable base policy, and the ``dpft`` command line.

One folder per method, each with its config and SB3 step or loop (``dsrl/``: SAC over the base's
noise; ``find/``: PPO over the noise distribution; ``residual/``: a learned correction;
``dppo/``: PPO through the denoising chain; ``dpo/``: preference updates of the denoiser), on the
shared run parts in ``common/`` (run loop and checkpoints, presets, guarded deployment, rollouts,
evaluation on fixed episodes, processes, video). ``commands/`` holds what is not a method: the
CLI (``python -m dpft.finetune`` is ``dpft``), the multi-process launcher, ``collect``, ``eval``,
``steerability`` and LeRobot export. Nothing outside ``commands/`` imports from it.
"""
