"""FIND: on-policy optimisation of the initial-noise distribution over a frozen base."""
