"""LeRobot diffusion policies in dpft: ``load_policy("lerobot:PATH")`` and ``dpft export lerobot``.

``folder`` reads and writes LeRobot's folder formats, ``unet`` is LeRobot's network under its
parameter names, ``schedule`` and ``normalizer`` reproduce its noise schedules and normalisation,
and ``policy`` puts them together as a dpft policy.
"""

PREFIX = "lerobot:"
