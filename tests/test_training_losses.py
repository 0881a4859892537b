"""
Training losses: the loss dict holds exactly the terms and weights the config implies, and DistributedDataParallel
over 2 processes x 2 images gives the gradients of 1 process x 4 images although the processes hold different
numbers of masks: the mask losses are normalised by the number of masks across processes. The class loss is, as
in the original, a mean per process weighted by NO_OBJECT_WEIGHT, which averages exactly over processes only when
they hold as many masks or when that weight is 1: the gradient test sets it to 1.
"""
import os
import socket
import subprocess
import sys
from unittest import mock

import pytest
import torch
from detectron2.modeling import build_model
from detectron2.structures import BitMasks, Instances

from conftest import R50, ROOT, TINY_MODEL, make_cfg

TINY = [
    *TINY_MODEL,
    "MODEL.MASK_FORMER.DEC_LAYERS 3",
    "MODEL.MASK_FORMER.NUM_OBJECT_QUERIES 8",
    "MODEL.MASK_FORMER.TRAIN_NUM_POINTS 64",
]
LOSSES = ("loss_ce", "loss_mask", "loss_dice")
DDP_OVERRIDES = ["MODEL.MASK_FORMER.NO_OBJECT_WEIGHT 1.0"]
_RAND = torch.rand


def make_batch(indices, size=64):
    """Training inputs of images ``indices``: image i, a fixed random image with 1 + i % 3 rectangles of classes 0-5."""
    batch = []
    for i in indices:
        g = torch.Generator().manual_seed(1000 + i)
        image = torch.rand(3, size, size, generator=g) * 255
        num = 1 + i % 3
        masks = torch.zeros(num, size, size, dtype=torch.bool)
        for m in range(num):
            y, x = torch.randint(0, size // 2, (2,), generator=g).tolist()
            h, w = torch.randint(8, size // 2, (2,), generator=g).tolist()
            masks[m, y : y + h, x : x + w] = True
            image[:, y : y + h, x : x + w] = 40.0 * (m + 1)
        instances = Instances((size, size))
        instances.gt_classes = torch.randint(0, 6, (num,), generator=g)
        instances.gt_masks = BitMasks(masks)
        batch.append({"image": image, "instances": instances})
    return batch


def _same_points_for_every_mask(*size, device=None, **kwargs):
    """
    ``torch.rand`` for the point sampling: one fixed set of points repeated along the first dimension, so a mask
    gets the same points whichever process and batch position it has.
    """
    size = tuple(size[0]) if len(size) == 1 and not isinstance(size[0], int) else size
    row = _RAND(size[1:], generator=torch.Generator().manual_seed(0))
    return row.expand(size).to(device).contiguous()


def build_tiny_model(overrides=()):
    torch.manual_seed(0)
    model = build_model(make_cfg(R50, TINY + list(overrides)))
    model.train()
    return model


def total_loss(model, batch):
    with mock.patch("torch.rand", _same_points_for_every_mask):
        losses = model(batch)
    return sum(losses.values())


@pytest.mark.parametrize(
    "deep_supervision, dec_layers, weights", [(True, 3, (2.0, 5.0, 5.0)), (False, 2, (1.5, 3.0, 4.0))]
)
def test_loss_dict_keys_and_weights_follow_the_config(deep_supervision, dec_layers, weights):
    class_weight, mask_weight, dice_weight = weights
    model = build_tiny_model(
        [
            f"MODEL.MASK_FORMER.DEEP_SUPERVISION {deep_supervision}",
            f"MODEL.MASK_FORMER.DEC_LAYERS {dec_layers}",
            f"MODEL.MASK_FORMER.CLASS_WEIGHT {class_weight}",
            f"MODEL.MASK_FORMER.MASK_WEIGHT {mask_weight}",
            f"MODEL.MASK_FORMER.DICE_WEIGHT {dice_weight}",
        ]
    )
    per_layer = dict(zip(LOSSES, weights))
    expected = dict(per_layer)
    if deep_supervision:
        # One set per decoder layer output before the last; DEC_LAYERS counts the prediction of the bare queries.
        for i in range(dec_layers - 1):
            expected.update({f"{name}_{i}": w for name, w in per_layer.items()})
    unweighted = {}
    model.criterion.register_forward_hook(lambda module, inputs, output: unweighted.update(output))
    with mock.patch("torch.rand", _same_points_for_every_mask):
        losses = model(make_batch([0, 1]))

    assert set(losses) == set(expected)
    assert set(expected) <= set(unweighted)
    for name, weight in expected.items():
        assert losses[name].ndim == 0 and torch.isfinite(losses[name])
        torch.testing.assert_close(losses[name], unweighted[name] * weight, rtol=1e-6, atol=0)


# Rank ``argv[1]`` of 2 at ``argv[2]``: gradients of images 2 * rank and 2 * rank + 1 (3 and 4 masks) through DDP,
# saved to argv[3].
WORKER = """
import sys
sys.path[:0] = [{root!r}, {tests!r}]
import torch
import torch.distributed as dist
from detectron2.engine import create_ddp_model
import test_training_losses as t

rank = int(sys.argv[1])
dist.init_process_group("gloo", init_method=sys.argv[2], rank=rank, world_size=2)
model = t.build_tiny_model(t.DDP_OVERRIDES)
ddp_model = create_ddp_model(model, broadcast_buffers=False, device_ids=None)  # as the Trainer on a CPU
t.total_loss(ddp_model, t.make_batch([2 * rank, 2 * rank + 1])).backward()
torch.save({{name: p.grad for name, p in model.named_parameters() if p.grad is not None}}, sys.argv[3])
dist.destroy_process_group()
"""


def _gradients(model):
    return {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}


def test_ddp_two_processes_of_two_images_give_the_gradients_of_one_process_of_four(tmp_path):
    worker = tmp_path / "worker.py"
    worker.write_text(WORKER.format(root=str(ROOT), tests=str(ROOT / "tests")))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        url = f"tcp://127.0.0.1:{s.getsockname()[1]}"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    ranks = [
        subprocess.Popen(
            [sys.executable, str(worker), str(rank), url, str(tmp_path / f"grads{rank}.pth")],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for rank in range(2)
    ]

    model = build_tiny_model(DDP_OVERRIDES)
    total_loss(model, make_batch(range(4))).backward()
    expected = _gradients(model)
    model.zero_grad()
    total_loss(model, make_batch([0, 1])).backward()
    first_half_only = _gradients(model)

    for rank, process in enumerate(ranks):
        try:
            log = process.communicate(timeout=300)[0]
        except subprocess.TimeoutExpired:
            for p in ranks:
                p.kill()
            pytest.fail("the DDP processes did not finish within 300 s")
        assert process.returncode == 0, f"rank {rank}:\n{log[-3000:]}"
    # Float sums in another order differ by rounding; gradients that are zero in exact arithmetic (biases of the
    # convolutions before a GroupNorm) hold rounding noise only: the tolerance is relative to the largest gradient.
    atol = 1e-5 * max(g.abs().max().item() for g in expected.values())
    grads = [torch.load(tmp_path / f"grads{rank}.pth") for rank in range(2)]
    for name in expected:
        assert torch.equal(grads[0][name], grads[1][name]), f"the ranks' averaged gradients differ in {name}"
    assert grads[0].keys() == expected.keys()
    for name, grad in grads[0].items():
        torch.testing.assert_close(grad, expected[name], rtol=1e-4, atol=atol, msg=name)
    # Not averaging (one process's own images) gives other gradients: the comparison above can tell.
    differs = [n for n, g in first_half_only.items() if not torch.allclose(g, expected[n], rtol=1e-2, atol=0)]
    assert len(differs) > len(expected) // 2
