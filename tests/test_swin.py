"""
D2SwinTransformer: the released checkpoints' state-dict layout for every Swin zoo config, the original's backbone
outputs on the reference weights, any input size, training with drop path, and gradient checkpointing.
"""
import json
import math
import pickle

import cv2
import numpy as np
import pytest
import torch
from detectron2.layers import ShapeSpec
from detectron2.modeling import BACKBONE_REGISTRY, build_backbone
from torch.nn import functional as F

from conftest import CONFIGS, FIXTURES, make_cfg

REF = FIXTURES / "reference_tiny"
SWIN_ZOO = [
    "maskformer2_swin_tiny_bs16_50ep",
    "maskformer2_swin_small_bs16_50ep",
    "maskformer2_swin_base_384_bs16_50ep",
    "maskformer2_swin_base_IN21k_384_bs16_50ep",
    "maskformer2_swin_large_IN21k_384_bs16_100ep",
]
LEVELS = ["res2", "res3", "res4", "res5"]
STRIDES = [4, 8, 16, 32]
PIXEL_MEAN = torch.tensor([123.675, 116.28, 103.53]).view(3, 1, 1)
PIXEL_STD = torch.tensor([58.395, 57.12, 57.375]).view(3, 1, 1)


def tiny_cfg(*overrides):
    """The config of the reference tiny Swin (EMBED_DIM 16, DEPTHS [1,1,2,1], window 7) plus ``overrides``."""
    spec = json.loads((REF / "tiny_swin_overrides.json").read_text())
    return make_cfg(CONFIGS.parent / spec["config"], spec["overrides"] + list(overrides))


def reference_weights():
    """The ``backbone.*`` tensors of the reference checkpoint, prefix stripped."""
    with open(REF / "tiny_swin.pkl", "rb") as f:
        weights = pickle.load(f)["model"]
    prefix = "backbone."
    return {k[len(prefix):]: torch.as_tensor(v) for k, v in weights.items() if k.startswith(prefix)}


def normalized_padded_image(image):
    """The backbone input of the reference run: RGB, normalized, zero-padded bottom/right to a multiple of 32."""
    rgb = cv2.imread(str(REF / f"image_{image}.png"), cv2.IMREAD_COLOR)[:, :, ::-1]
    x = (torch.as_tensor(np.ascontiguousarray(rgb.transpose(2, 0, 1))).float() - PIXEL_MEAN) / PIXEL_STD
    h, w = x.shape[1:]
    return F.pad(x, (0, -w % 32, 0, -h % 32))[None]


@pytest.mark.parametrize("stem", SWIN_ZOO)
def test_state_dict_and_shapes_match_released_layout(stem):
    expected = json.loads((FIXTURES / "zoo_keys" / f"keys_{stem}.json").read_text())
    cfg = make_cfg(CONFIGS.parent / expected["config"])
    backbone = BACKBONE_REGISTRY.get(cfg.MODEL.BACKBONE.NAME)(cfg, ShapeSpec(channels=3))

    ours = [[k, list(v.shape), str(v.dtype).replace("torch.", "")] for k, v in backbone.state_dict().items()]
    prefix = "backbone."
    theirs = [[k[len(prefix):], shape, dtype] for k, shape, dtype in expected["state_dict"] if k.startswith(prefix)]
    assert [e[0] for e in ours] == [e[0] for e in theirs]
    assert ours == theirs
    buffers = [k[len(prefix):] for k in expected["buffers_in_state_dict"] if k.startswith(prefix)]
    assert [name for name, _ in backbone.named_buffers()] == buffers

    dim = cfg.MODEL.SWIN.EMBED_DIM
    assert backbone.output_shape() == {
        level: ShapeSpec(channels=dim * 2**i, stride=stride) for i, (level, stride) in enumerate(zip(LEVELS, STRIDES))
    }
    assert backbone.size_divisibility == 32


@pytest.fixture(scope="module")
def reference_backbone():
    torch.set_num_threads(2)
    backbone = build_backbone(tiny_cfg())
    weights = reference_weights()
    fresh = backbone.state_dict()
    index_keys = [k for k in weights if k.endswith("relative_position_index")]
    assert index_keys
    for key in index_keys:
        assert torch.equal(fresh[key], weights[key]), f"{key} differs from the original's"
    backbone.load_state_dict(weights, strict=True)
    return backbone.eval()


@pytest.mark.parametrize("image", "AB")
def test_outputs_match_original_backbone(reference_backbone, image):
    x = normalized_padded_image(image)
    expected = np.load(REF / f"tiny_swin_{image}_intermediates.npz")
    with torch.no_grad():
        outputs = reference_backbone(x)
    assert sorted(outputs) == LEVELS
    for level in LEVELS:
        ref = expected[f"backbone_{level}"]
        assert tuple(outputs[level].shape) == ref.shape
        diff = np.abs(outputs[level].numpy() - ref).max()
        assert diff <= 1e-4, f"{level}: max abs diff {diff}"


@pytest.mark.parametrize("size", [(33, 47), (100, 61), (5, 3)])
def test_any_input_size(reference_backbone, size):
    h, w = size
    torch.manual_seed(0)
    x = torch.randn(2, 3, h, w)
    with torch.no_grad():
        outputs = reference_backbone(x)
        again = reference_backbone(x)
        # Zero-padding the image to the patch size is what the patch embedding does itself.
        padded = reference_backbone(F.pad(x, (0, -w % 4, 0, -h % 4)))
    for i, (level, stride) in enumerate(zip(LEVELS, STRIDES)):
        assert outputs[level].shape == (2, 16 * 2**i, math.ceil(h / stride), math.ceil(w / stride))
        assert torch.isfinite(outputs[level]).all()
        assert torch.equal(outputs[level], again[level])
        torch.testing.assert_close(outputs[level], padded[level], rtol=0, atol=1e-5)


def test_images_of_a_batch_are_independent(reference_backbone):
    torch.manual_seed(0)
    x = torch.randn(3, 3, 64, 96)
    with torch.no_grad():
        batched = reference_backbone(x)
        single = reference_backbone(x[1:2])
    for level in LEVELS:
        torch.testing.assert_close(batched[level][1:2], single[level], rtol=0, atol=1e-5)


def test_training_with_drop_path_runs_backward():
    torch.manual_seed(0)
    backbone = build_backbone(tiny_cfg("MODEL.SWIN.DROP_PATH_RATE 0.5")).train()
    x = torch.randn(4, 3, 45, 70)
    outputs = backbone(x)
    assert not torch.equal(outputs["res5"], backbone(x)["res5"]), "drop path must be random in training"
    sum(out.square().mean() for out in outputs.values()).backward()
    for name, param in backbone.named_parameters():
        assert param.grad is not None and torch.isfinite(param.grad).all(), name
    with torch.no_grad():
        backbone.eval()
        assert torch.equal(backbone(x)["res5"], backbone(x)["res5"])


def test_gradient_checkpointing_gives_identical_outputs_and_gradients():
    torch.manual_seed(0)
    plain = build_backbone(tiny_cfg()).train()
    checkpointed = build_backbone(tiny_cfg("MODEL.SWIN.USE_CHECKPOINT True")).train()
    checkpointed.load_state_dict(plain.state_dict())
    x = torch.randn(2, 3, 70, 90)
    results = []
    for backbone in (plain, checkpointed):
        torch.manual_seed(1)
        outputs = backbone(x)
        sum(out.square().mean() for out in outputs.values()).backward()
        grads = {name: p.grad.clone() for name, p in backbone.named_parameters()}
        results.append((outputs, grads))
    (out_a, grad_a), (out_b, grad_b) = results
    for level in LEVELS:
        torch.testing.assert_close(out_b[level], out_a[level], rtol=0, atol=1e-6)
    for name in grad_a:
        torch.testing.assert_close(grad_b[name], grad_a[name], rtol=1e-5, atol=1e-7, msg=name)
    # The relative position bias reaches the loss through the attention of every block.
    assert all(g.abs().sum() > 0 for name, g in grad_a.items() if name.endswith("relative_position_bias_table"))


def test_bad_inputs_are_rejected(reference_backbone):
    with pytest.raises(ValueError, match=r"\(N, C, H, W\)"):
        reference_backbone(torch.zeros(3, 64, 64))
    with pytest.raises(ValueError, match="OUT_FEATURES"):
        build_backbone(tiny_cfg("MODEL.SWIN.OUT_FEATURES ['res6']"))
    with pytest.raises(ValueError, match="NUM_HEADS"):
        build_backbone(tiny_cfg("MODEL.SWIN.NUM_HEADS [1,2,4]"))
    with pytest.raises(ValueError, match="divisible"):
        build_backbone(tiny_cfg("MODEL.SWIN.NUM_HEADS [3,2,4,8]"))
