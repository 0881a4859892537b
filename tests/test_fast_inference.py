"""
The fast inference path, MODEL.MASK_FORMER.TEST.AUTOCAST_DTYPE, on the fixture weights; bfloat16 CPU autocast, so
no GPU is needed.

Off (the default), the model computes exactly what it computes without the switch: identical tensors, however the
switch was used before. On, every stage computes the same function within bfloat16 precision and post-processing
still gets float32. Only the stages up to the decoder's first prediction are compared: the decoder thresholds the
previous prediction's mask logits at 0 to build its attention masks, and with these untrained weights the ~1 %
perturbation of any 16-bit format flips enough of them to change the later layers by O(1) (measured: 10-60 %
relative after three layers, float16 alike). Trained weights are checked by PQ instead (docs/benchmarks.md).
"""
import json

import pytest
import torch
from detectron2.modeling import build_model

from conftest import CONFIGS, make_cfg
from mask2former.modeling.meta_arch import maskformer_model
from test_reference_tiny import REF, Recorder, build_reference_model, build_tiny_model, decoder_predictions, read_input

MODELS = ["tiny_r50", "tiny_swin"]

# Relative L2 error bounds. bfloat16 keeps 8 significant bits: each rounding of a matmul/conv input costs up to
# 2^-9 = 0.2 %, and the errors of ~10-20 rounded layers add up. Measured on both fixture models and both images:
# backbone <= 1.0 %, pixel decoder <= 4 %, first prediction: class logits <= 0.3 %, mask logits <= 2.3 %.
# The bounds leave a margin of ~3x.
TOLERANCE = {"backbone": 0.03, "pixel decoder": 0.12, "logits": 0.01, "masks": 0.07}


def relative_error(actual, expected):
    return float((actual.float() - expected).norm() / expected.norm())


def outputs_as_tensors(output):
    """Every tensor of an inference output, by name."""
    panoptic_seg, segments_info = output["panoptic_seg"]
    instances = output["instances"]
    return {
        "sem_seg": output["sem_seg"],
        "panoptic_seg": panoptic_seg,
        "segment_ids": torch.tensor([s["id"] for s in segments_info], dtype=torch.long),
        "segment_classes": torch.tensor([s["category_id"] for s in segments_info], dtype=torch.long),
        "pred_masks": instances.pred_masks,
        "pred_boxes": instances.pred_boxes.tensor,
        "scores": instances.scores,
        "pred_classes": instances.pred_classes,
    }


def run(model, image="A"):
    with torch.no_grad():
        return model([read_input(image)])[0]


@pytest.fixture(scope="module", params=MODELS)
def fast_and_float(request):
    """One fixture model; its float32 run and its bfloat16 run, each with the recorded stage outputs."""
    torch.set_num_threads(2)
    model = build_reference_model(request.param)
    recorder = Recorder(model)
    runs = {}
    for dtype in (None, torch.bfloat16):
        model.autocast_dtype = dtype
        # The bfloat16 path as on a CPU with bf16 matrix instructions (elsewhere it falls back to float32).
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(maskformer_model, "native_bf16_matmul", lambda: True)
            output, values = run(model), dict(recorder.values)
        with torch.autocast("cpu", dtype=dtype or torch.float32, enabled=dtype is not None):
            values["predictions"] = decoder_predictions(model, values)
        runs[dtype] = output, values
    model.autocast_dtype = None
    return model, runs


def test_switch_is_off_by_default_and_checked():
    cfg = make_cfg(CONFIGS / "coco/panoptic-segmentation/maskformer2_R50_bs16_50ep.yaml")
    assert cfg.MODEL.MASK_FORMER.TEST.AUTOCAST_DTYPE == ""
    assert build_tiny_model("tiny_r50").autocast_dtype is None

    spec = json.loads((REF / "tiny_r50_overrides.json").read_text())
    config = CONFIGS.parent / spec["config"]
    overrides = spec["overrides"] + spec["forced_overrides"]
    explicit_off = build_model(make_cfg(config, overrides + ["MODEL.MASK_FORMER.TEST.AUTOCAST_DTYPE float32"]))
    assert explicit_off.autocast_dtype is None
    with pytest.raises(ValueError, match="AUTOCAST_DTYPE='bf16'.*bfloat16"):
        build_model(make_cfg(config, overrides + ["MODEL.MASK_FORMER.TEST.AUTOCAST_DTYPE bf16"]))


def test_switch_off_leaves_outputs_identical(fast_and_float):
    model, runs = fast_and_float
    # A bfloat16 run has happened in between: it must leave nothing behind (no converted weights, no autocast state).
    again = outputs_as_tensors(run(model))
    before = outputs_as_tensors(runs[None][0])
    for name, tensor in before.items():
        assert torch.equal(again[name], tensor), name
    assert runs[None][1]["decoder"]["pred_masks"].dtype == torch.float32


def test_switch_on_stays_within_bfloat16_precision(fast_and_float):
    _, runs = fast_and_float
    (fast_out, fast), (float_out, ref) = runs[torch.bfloat16], runs[None]
    # The switch took effect: the pixel decoder computed in bfloat16, the prediction heads in float32.
    assert fast["mask_features"].dtype == torch.bfloat16
    assert fast["decoder"]["pred_masks"].dtype == fast["decoder"]["pred_logits"].dtype == torch.float32

    for level, feature in ref["backbone"].items():
        assert relative_error(fast["backbone"][level], feature) <= TOLERANCE["backbone"], level
    assert relative_error(fast["mask_features"], ref["mask_features"]) <= TOLERANCE["pixel decoder"]
    for i, feature in enumerate(ref["multi_scale"]):
        assert relative_error(fast["multi_scale"][i], feature) <= TOLERANCE["pixel decoder"], i
    first, first_ref = fast["predictions"][0], ref["predictions"][0]
    assert relative_error(first["pred_logits"], first_ref["pred_logits"]) <= TOLERANCE["logits"]
    assert relative_error(first["pred_masks"], first_ref["pred_masks"]) <= TOLERANCE["masks"]

    # Post-processing ran in float32 on the same output sizes.
    fast_tensors, float_tensors = outputs_as_tensors(fast_out), outputs_as_tensors(float_out)
    for name in ("sem_seg", "panoptic_seg", "pred_masks", "scores"):
        assert fast_tensors[name].dtype == float_tensors[name].dtype, name
    for name in ("sem_seg", "panoptic_seg", "pred_masks"):
        assert fast_tensors[name].shape[-2:] == float_tensors[name].shape[-2:], name


def test_switch_off_keeps_a_callers_autocast(fast_and_float):
    model, runs = fast_and_float
    # The switch off must not disable autocast around the model: under the caller's bfloat16 autocast the head
    # computes exactly what the switch's own bfloat16 path computes.
    recorder = Recorder(model)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        run(model)
    switched = runs[torch.bfloat16][1]["decoder"]
    for name in ("pred_logits", "pred_masks"):
        assert torch.equal(recorder.values["decoder"][name], switched[name]), name
