"""DPPO: PPO through the last denoising steps of the base policy itself."""
