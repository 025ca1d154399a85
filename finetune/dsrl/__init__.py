"""DSRL: latent-noise steering of a frozen diffusion policy."""
