"""Preference fine-tuning of the denoiser itself (Diffusion-DPO, D3PO), with a frozen reference.

``prefs`` is the file format, ``sampling`` the rollouts and pairs, ``collect`` / ``tools`` /
``label`` the ``dpft prefs ...`` commands, ``losses`` the loss registry and ``train`` the
``dpft finetune dpo`` command with its collection rounds.
"""
