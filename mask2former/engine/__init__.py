"""Training: the Trainer (data, optimizer, schedule, checkpoints, evaluation), its hooks, the process launcher."""
from .hooks import NonFiniteLossCheck, PreemptionCheckpoint, TrainingPreempted
from .launch import ClusterEnv, cluster_env, launch_job
from .trainer import Trainer, optimizer_param_groups, with_full_model_gradient_clipping

__all__ = [
    "ClusterEnv",
    "NonFiniteLossCheck",
    "PreemptionCheckpoint",
    "Trainer",
    "TrainingPreempted",
    "cluster_env",
    "launch_job",
    "optimizer_param_groups",
    "with_full_model_gradient_clipping",
]
