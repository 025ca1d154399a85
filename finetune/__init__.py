"""Fine-tuning methods (DSRL, residual RL, DPO), rollouts and the ``dpft`` CLI."""
