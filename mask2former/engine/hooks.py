"""Stopping training at the first non-finite loss, before it reaches the weights."""
import torch
from detectron2.engine import HookBase


class NonFiniteLossCheck(HookBase):
    """
    Raise ``FloatingPointError`` naming the loss terms and the iteration as soon as the model's forward pass
    returns a NaN or infinite loss. The check runs on the loss dict as it leaves the model, so neither backward
    nor the optimizer step sees it and the weights (and any checkpoint saved later) keep their last finite state.
    """

    def before_train(self):
        self._handle = self.trainer.model.register_forward_hook(self._check)

    def after_train(self):
        self._handle.remove()

    def _check(self, module, inputs, losses):
        if not module.training or not isinstance(losses, dict) or not losses:
            return
        finite = torch.stack([torch.isfinite(v.detach()).all() for v in losses.values()])
        if bool(finite.all()):  # one device sync per iteration
            return
        terms = zip(losses.items(), finite.tolist())
        bad = ", ".join(f"{name} = {value.float().sum().item()}" for (name, value), ok in terms if not ok)
        raise FloatingPointError(
            f"Non-finite loss at iteration {self.trainer.iter}: {bad}. Training stopped before the optimizer step, "
            "so the weights and the last checkpoint are the last finite ones. Lower SOLVER.BASE_LR, enable "
            "SOLVER.CLIP_GRADIENTS, or inspect this iteration's images and annotations; then resume with --resume."
        )
