"""Base policies: diffusion and flow policies with controllable noise, BC training, checkpoints."""

from base_policies.checkpoint import load_policy
from base_policies.config import ArchConfig, PolicyConfig
from base_policies.diffusion import DiffusionPolicy
from base_policies.errors import CheckpointError, ConfigError, DatasetError, DpftError, TaskError
from base_policies.flow import FlowPolicy
from base_policies.policy import POLICY_TYPES, DenoisingPolicy, Policy, register_policy

__all__ = [
    "POLICY_TYPES",
    "ArchConfig",
    "CheckpointError",
    "ConfigError",
    "DatasetError",
    "DenoisingPolicy",
    "DiffusionPolicy",
    "DpftError",
    "FlowPolicy",
    "Policy",
    "PolicyConfig",
    "TaskError",
    "load_policy",
    "register_policy",
]
