"""Training: the Trainer (data, optimizer, schedule, checkpoints, evaluation) and its hooks."""
from .hooks import NonFiniteLossCheck
from .trainer import Trainer, optimizer_param_groups, with_full_model_gradient_clipping

__all__ = ["NonFiniteLossCheck", "Trainer", "optimizer_param_groups", "with_full_model_gradient_clipping"]
