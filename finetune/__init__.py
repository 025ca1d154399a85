"""Fine-tuning methods (DSRL so far; residual RL and DPO are planned), rollouts and the ``dpft`` CLI."""
