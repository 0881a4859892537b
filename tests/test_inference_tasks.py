"""
Inference returns exactly the outputs MODEL.MASK_FORMER.TEST switches on, computed as the original computes them:
semantic-only models score classes at mask resolution and then resize (unless
SEM_SEG_POSTPROCESSING_BEFORE_INFERENCE), instance-only models treat every class as a thing.
"""
from functools import lru_cache

import pytest
import torch
from detectron2.modeling import build_model
from torch.nn import functional as F

from conftest import R50, TINY_MODEL, make_cfg
from mask2former.modeling.inference import maskformer_inference
from mask2former.modeling.postprocessing import instance_inference, panoptic_inference, semantic_inference

ONLY = {
    "semantic": ["SEMANTIC_ON True", "INSTANCE_ON False", "PANOPTIC_ON False"],
    "instance": ["SEMANTIC_ON False", "INSTANCE_ON True", "PANOPTIC_ON False"],
    "panoptic": ["SEMANTIC_ON False", "INSTANCE_ON False", "PANOPTIC_ON True"],
    "all": ["SEMANTIC_ON True", "INSTANCE_ON True", "PANOPTIC_ON True"],
}
KEYS = {
    "semantic": {"sem_seg"},
    "instance": {"instances"},
    "panoptic": {"panoptic_seg"},
    "all": {"sem_seg", "instances", "panoptic_seg"},
}
# The toy dataset's metadata (registered on import, files not needed): things 0-2, stuff 3-5.
TOY_TRAIN = "DATASETS.TRAIN ('toy_panoptic_train_panoptic',)"


@lru_cache(maxsize=None)
def _model(outputs, extra=()):
    """A tiny random model with the ``outputs`` switches (built once per test session)."""
    switches = [f"MODEL.MASK_FORMER.TEST.{s}" for s in ONLY[outputs]]
    small = [TOY_TRAIN, "MODEL.MASK_FORMER.DEC_LAYERS 2", "MODEL.MASK_FORMER.NUM_OBJECT_QUERIES 10"]
    cfg = make_cfg(R50, TINY_MODEL + switches + small + list(extra))
    torch.manual_seed(0)
    return build_model(cfg).eval()


@pytest.mark.parametrize("outputs", list(ONLY))
def test_forward_returns_exactly_the_enabled_outputs(outputs):
    model = _model(outputs)
    image = torch.randint(0, 256, (3, 40, 56), dtype=torch.uint8)
    with torch.no_grad():
        (result,) = model([{"image": image, "height": 20, "width": 28}])
    assert set(result) == KEYS[outputs]
    if "sem_seg" in result:
        assert result["sem_seg"].shape == (6, 20, 28)
    if "instances" in result:
        assert result["instances"].image_size == (20, 28)
    if "panoptic_seg" in result:
        assert result["panoptic_seg"][0].shape == (20, 28)


def _infer(model, mask_cls, mask_pred, height, width):
    """The model's post-processing of one image's (Q, K+1) logits and (Q, h, w) mask logits (no padding)."""
    size = tuple(mask_pred.shape[-2:])
    settings = model.inference_settings
    return maskformer_inference(mask_cls[None], mask_pred[None], size, [size], [(height, width)], settings)[0]


def _predictions():
    """Logits of 3 queries over 6 classes + no-object (query 0: stuff class 4, 1: thing class 1, 2: no object)."""
    mask_cls = torch.full((3, 7), -5.0)
    mask_cls[0, 4] = mask_cls[1, 1] = mask_cls[2, 6] = 5.0
    mask_pred = torch.randn((3, 8, 8), generator=torch.Generator().manual_seed(0)) * 4
    return mask_cls, mask_pred


def test_semantic_only_scores_at_mask_resolution_then_resizes():
    mask_cls, mask_pred = _predictions()
    # The definition: per-class sum over queries of class probability x mask probability, on the 8x8 masks, then
    # bilinear resize to the 16x16 output.
    at_mask_resolution = torch.einsum("qc,qhw->chw", mask_cls.softmax(-1)[:, :-1], mask_pred.sigmoid())
    expected = F.interpolate(at_mask_resolution[None], size=(16, 16), mode="bilinear", align_corners=False)[0]
    result = _infer(_model("semantic"), mask_cls, mask_pred, 16, 16)
    assert set(result) == {"sem_seg"}
    torch.testing.assert_close(result["sem_seg"], expected)

    # With SEM_SEG_POSTPROCESSING_BEFORE_INFERENCE the mask logits are resized first: a different map.
    resized_masks = F.interpolate(mask_pred[None], size=(16, 16), mode="bilinear", align_corners=False)[0]
    expected_before = torch.einsum("qc,qhw->chw", mask_cls.softmax(-1)[:, :-1], resized_masks.sigmoid())
    model = _model("semantic", ("MODEL.MASK_FORMER.TEST.SEM_SEG_POSTPROCESSING_BEFORE_INFERENCE True",))
    result_before = _infer(model, mask_cls, mask_pred, 16, 16)
    torch.testing.assert_close(result_before["sem_seg"], expected_before)
    assert not torch.allclose(expected_before, expected, atol=1e-3)


def test_instance_only_treats_every_class_as_a_thing():
    mask_cls, mask_pred = _predictions()
    # 3 queries x 6 classes = 18 (query, class) pairs, all within TEST.DETECTIONS_PER_IMAGE (100).
    result = _infer(_model("instance"), mask_cls, mask_pred, 8, 8)
    assert set(result) == {"instances"}
    instances = result["instances"]
    assert len(instances) == 18 and set(instances.pred_classes.tolist()) == set(range(6))
    best = instances.scores.argmax()
    assert instances.pred_classes[best] == 4, "the stuff-class query is the most confident instance"

    # With panoptic outputs on, instances are restricted to the dataset's thing classes.
    both = _infer(_model("all"), mask_cls, mask_pred, 8, 8)["instances"]
    assert len(both) == 9 and set(both.pred_classes.tolist()) == {0, 1, 2}


def test_instance_only_without_thing_metadata_needs_none():
    model = _model("instance", ("DATASETS.TRAIN ()",))
    instances = _infer(model, *_predictions(), 8, 8)["instances"]
    assert set(instances.pred_classes.tolist()) == set(range(6))


def test_all_outputs_equal_each_function_on_the_logits():
    # Post-processing overwrites its full-resolution mask logits with probabilities once the instance masks are
    # binarized; each output must still be what its function gives on the logits, and the caller's tensors stay.
    mask_cls, mask_pred = _predictions()
    # Logits just above 0 whose sigmoid rounds to 0.5: inside the mask only if binarized from the logits.
    mask_pred[1, :2] = 1e-9
    inputs = (mask_cls.clone(), mask_pred.clone())
    model = _model("all")
    settings = model.inference_settings
    result = _infer(model, mask_cls, mask_pred, 8, 8)
    assert torch.equal(mask_cls, inputs[0]) and torch.equal(mask_pred, inputs[1])

    torch.testing.assert_close(result["sem_seg"], semantic_inference(mask_cls, mask_pred), rtol=0, atol=0)
    panoptic_seg, segments_info = panoptic_inference(
        mask_cls,
        mask_pred,
        num_classes=6,
        thing_classes=settings.thing_classes,
        object_mask_threshold=settings.object_mask_threshold,
        overlap_threshold=settings.overlap_threshold,
    )
    assert torch.equal(result["panoptic_seg"][0], panoptic_seg) and result["panoptic_seg"][1] == segments_info
    instances = instance_inference(
        mask_cls, mask_pred, num_classes=6, topk=settings.test_topk_per_image, thing_classes=settings.thing_classes
    )
    for field in ("pred_classes", "scores", "pred_masks"):
        assert torch.equal(result["instances"].get(field), instances.get(field)), field
    thing_query = result["instances"].query_indices.eq(1)
    assert thing_query.any() and bool(result["instances"].pred_masks[thing_query][:, :2].eq(1).all())
