"""
The proof that our model is the same function as the original: the released-format checkpoints of
``shared/fixtures/reference_tiny`` load through detectron2's DetectionCheckpointer and reproduce the original's
outputs and intermediate tensors on both images (B is not a multiple of 32), within the fixture's tolerances.
"""
import json

import cv2
import numpy as np
import pytest
import torch
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.modeling import build_model

from conftest import CONFIGS, FIXTURES, make_cfg

REF = FIXTURES / "reference_tiny"
MODELS = ["tiny_r50", "tiny_swin"]


def build_tiny_model(name):
    """The randomly initialized model of the fixture's config + overrides."""
    spec = json.loads((REF / f"{name}_overrides.json").read_text())
    cfg = make_cfg(CONFIGS.parent / spec["config"], spec["overrides"] + spec["forced_overrides"])
    return build_model(cfg).eval()


def build_reference_model(name):
    """The fixture's model loaded from its .pkl exactly as a user would."""
    model = build_tiny_model(name)
    DetectionCheckpointer(model).load(str(REF / f"{name}.pkl"))
    return model


def read_input(image):
    rgb = cv2.imread(str(REF / f"image_{image}.png"), cv2.IMREAD_COLOR)[:, :, ::-1]
    tensor = torch.as_tensor(np.ascontiguousarray(rgb.transpose(2, 0, 1)))
    return {"image": tensor, "height": tensor.shape[1], "width": tensor.shape[2]}


class Recorder:
    """Captures the backbone, pixel-decoder and decoder outputs of a forward pass."""

    def __init__(self, model):
        self.values = {}
        model.backbone.register_forward_hook(lambda m, i, o: self.values.__setitem__("backbone", o))
        model.sem_seg_head.predictor.register_forward_hook(lambda m, i, o: self._decoder(i, o))

    def _decoder(self, inputs, outputs):
        self.values["multi_scale"], self.values["mask_features"] = inputs[0], inputs[1]
        self.values["decoder"] = outputs


def decoder_predictions(model, values):
    """
    Every prediction of the decoder on the recorded inputs: from the learnable queries, then after each layer.
    Inference returns only the last; the training-mode forward returns them all, and the decoder has no dropout,
    so it computes the same function.
    """
    predictor = model.sem_seg_head.predictor
    predictor.train()
    try:
        with torch.no_grad():
            out = predictor(values["multi_scale"], values["mask_features"])
    finally:
        predictor.eval()
    return out["aux_outputs"] + [{"pred_logits": out["pred_logits"], "pred_masks": out["pred_masks"]}]


@pytest.fixture(scope="module", params=MODELS)
def reference_run(request):
    name = request.param
    torch.set_num_threads(2)
    model = build_reference_model(name)
    recorder = Recorder(model)
    runs = {}
    for image in "AB":
        with torch.no_grad():
            output = model([read_input(image)])[0]
        values = dict(recorder.values)
        values["predictions"] = decoder_predictions(model, values)
        runs[image] = (output, values)
    return name, runs


def _close(actual, expected, atol):
    actual = actual.detach().float().numpy() if torch.is_tensor(actual) else actual
    assert actual.shape == expected.shape
    diff = np.abs(actual - expected.astype(np.float32)).max()
    assert diff <= atol, f"max abs diff {diff} > {atol}"


@pytest.mark.parametrize("image", "AB")
def test_intermediate_tensors(reference_run, image):
    name, runs = reference_run
    _, values = runs[image]
    inter = np.load(REF / f"{name}_{image}_intermediates.npz")
    for level in ["res2", "res3", "res4", "res5"]:
        _close(values["backbone"][level], inter[f"backbone_{level}"], 1e-3)
    _close(values["mask_features"], inter["pixel_decoder_mask_features"], 1e-3)
    for i, feature in enumerate(values["multi_scale"]):
        _close(feature, inter[f"pixel_decoder_multi_scale_{i}"], 1e-3)
    assert "aux_outputs" not in values["decoder"]
    aux = values["predictions"][:-1]
    assert len(aux) == sum(1 for k in inter.files if k.endswith("_pred_logits"))
    for i, layer in enumerate(aux):
        _close(layer["pred_logits"], inter[f"layer{i}_pred_logits"], 1e-3)
        _close(layer["pred_masks"], inter[f"layer{i}_pred_masks"], 1e-3)


@pytest.mark.parametrize("image", "AB")
def test_final_predictions_and_semantic_output(reference_run, image):
    name, runs = reference_run
    output, values = runs[image]
    expected = np.load(REF / f"{name}_{image}.npz")
    _close(values["decoder"]["pred_logits"], expected["pred_logits"], 1e-3)
    _close(values["decoder"]["pred_masks"], expected["pred_masks"], 1e-3)
    for name in ("pred_logits", "pred_masks"):
        assert torch.equal(values["predictions"][-1][name], values["decoder"][name]), name

    sem_seg = output["sem_seg"]
    h, w = expected["sem_seg_argmax"].shape
    assert sem_seg.shape == (133, h, w)
    _close(sem_seg[:, ::16, ::16], expected["sem_seg_s16"], 2e-3)
    _close(sem_seg[:, h - 1, ::16], expected["sem_seg_lastrow_s16"], 2e-3)
    _close(sem_seg[:, ::16, w - 1], expected["sem_seg_lastcol_s16"], 2e-3)
    # The fixture's images have up to 66 pixels whose top-2 classes are within 1e-4: float noise may flip those,
    # and only those.
    scores = sem_seg.numpy()
    ys, xs = np.nonzero(scores.argmax(0) != expected["sem_seg_argmax"])
    gaps = scores[:, ys, xs].max(0) - scores[expected["sem_seg_argmax"][ys, xs], ys, xs]
    assert len(ys) <= 66 and (gaps <= 1e-4).all(), f"{len(ys)} pixels differ, largest score gap {gaps.max()}"


@pytest.mark.parametrize("image", "AB")
def test_panoptic_output(reference_run, image):
    name, runs = reference_run
    output, _ = runs[image]
    expected = np.load(REF / f"{name}_{image}.npz")
    segments = json.loads((REF / f"{name}_{image}_segments_info.json").read_text())
    panoptic_seg, segments_info = output["panoptic_seg"]
    assert segments_info == segments
    assert panoptic_seg.dtype == torch.int32
    differing = int((panoptic_seg.numpy() != expected["panoptic_seg"]).sum())
    assert differing <= 1e-4 * panoptic_seg.numel()


def unpack_masks(packed, index, shape):
    h, w = shape
    unique = np.stack([np.unpackbits(row)[: h * w].reshape(h, w) for row in packed]) if len(packed) else np.zeros((0, h, w))
    return unique[index].astype(bool)


@pytest.mark.parametrize("image", "AB")
def test_instance_output(reference_run, image):
    name, runs = reference_run
    output, _ = runs[image]
    expected = np.load(REF / f"{name}_{image}.npz")
    instances = output["instances"]
    h, w = expected["sem_seg_argmax"].shape
    assert instances.image_size == (h, w)
    exp_masks = unpack_masks(expected["inst_masks_unique_packed"], expected["inst_masks_index"], (h, w))

    # topk(sorted=False) order is implementation-defined: match instances by (query, class).
    ours = {
        (q, c): i
        for i, (q, c) in enumerate(zip(instances.query_indices.tolist(), instances.pred_classes.tolist()))
    }
    keys = list(zip(expected["inst_query_index"].tolist(), expected["inst_pred_classes"].tolist()))
    assert sorted(ours) == sorted(keys)
    for j, key in enumerate(keys):
        i = ours[key]
        assert abs(float(instances.scores[i]) - float(expected["inst_scores"][j])) <= 1e-4
        mask = instances.pred_masks[i].numpy() > 0
        union = np.logical_or(mask, exp_masks[j]).sum()
        if union:
            assert np.logical_and(mask, exp_masks[j]).sum() / union >= 0.999
        # Boxes are the masks' bounding boxes (the original leaves them all zero).
        if mask.any():
            ys, xs = np.nonzero(mask)
            assert instances.pred_boxes.tensor[i].tolist() == [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]
    assert set(instances.pred_classes.tolist()) <= set(range(80)), "panoptic models keep thing classes only"
