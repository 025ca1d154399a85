"""Fine-tuning a frozen or trainable base policy, and the ``dpft`` command line.

One folder per method, each with its config and SB3 step or loop (``dsrl/``: SAC over the base's
noise; ``find/``: PPO over the noise distribution; ``residual/``: a learned correction; ``dpo/``:
preference updates of the denoiser), on the shared run parts in ``common/`` (run folder, resume,
presets, guarded deployment, evaluation). Beside them: the CLI (``cli.py``), multi-process
launches (``launch.py``, ``distributed.py``), rollouts, evaluation, collection, video, the
steerability probe and LeRobot export.
"""
