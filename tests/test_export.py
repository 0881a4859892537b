"""
Export (issue 14): each reference_tiny model exported to ONNX and to TorchScript (tiny_swin by the function, tiny_r50
by the command line), traced at a third size; each file reproduces the original's predictions at both fixture sizes
(A 320x480, B 257x391 padded to 288x416), and ``ExportedPredictor`` post-processes them into the same outputs as the
PyTorch model, with the same function.
"""
import json

import numpy as np
import pytest
import torch

from conftest import CONFIGS, ROOT, load_script, make_cfg, split_overrides
from test_reference_tiny import REF, build_reference_model, read_input

from mask2former.export import FORMATS, ExportedPredictor, export_model
from mask2former.export import predictor as predictor_module
from mask2former.modeling import inference
from mask2former.modeling.meta_arch import maskformer_model

pytest.importorskip("onnxruntime")
# Neither fixture size: the file must generalize from the traced size.
TRACE_SIZE = (224, 352)


def reference_cfg(name, extra=()):
    spec = json.loads((REF / f"{name}_overrides.json").read_text())
    return make_cfg(CONFIGS.parent / spec["config"], spec["overrides"] + spec["forced_overrides"] + list(extra))


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """name -> (PyTorch model, {format: file}): tiny_swin by the function, tiny_r50 by the command line."""
    torch.set_num_threads(2)
    folder = tmp_path_factory.mktemp("export")
    swin = build_reference_model("tiny_swin")
    swin_files = {fmt: folder / f"tiny_swin.{fmt}" for fmt in FORMATS}
    for fmt, path in swin_files.items():
        export_model(swin, reference_cfg("tiny_swin"), path, fmt, sample_size=TRACE_SIZE)

    spec = json.loads((REF / "tiny_r50_overrides.json").read_text())
    r50_files = {fmt: folder / f"tiny_r50.{fmt}" for fmt in FORMATS}
    cli = load_script(ROOT / "tools/export_model.py")
    for fmt, path in r50_files.items():
        assert cli.main([
            "--config-file", str(CONFIGS.parent / spec["config"]), "--weights", str(REF / "tiny_r50.pkl"),
            "--format", fmt, "--output", str(path), "--sample-size", *map(str, TRACE_SIZE),
            "--opts", *split_overrides(spec["overrides"] + spec["forced_overrides"][:1]),
        ]) == 0
    return {"tiny_swin": (swin, swin_files), "tiny_r50": (build_reference_model("tiny_r50"), r50_files)}


CASES = [(name, fmt) for name in ("tiny_swin", "tiny_r50") for fmt in FORMATS]


@pytest.fixture(scope="module", params=CASES, ids=["-".join(c) for c in CASES])
def runs(request, exported):
    """Per image: the exported predictor's raw predictions and outputs, and the PyTorch model's outputs."""
    name, fmt = request.param
    model, files = exported[name]
    predictor = ExportedPredictor(files[fmt], reference_cfg(name))
    results = {}
    for image in "AB":
        inputs = read_input(image)
        images = (inputs["image"].float() - model.pixel_mean) / model.pixel_std
        h, w = images.shape[-2:]
        images = torch.nn.functional.pad(images, (0, -w % 32, 0, -h % 32))[None]
        with torch.no_grad():
            results[image] = (predictor.run(images), predictor([inputs])[0], model([inputs])[0])
    return name, results


@pytest.mark.parametrize("image", "AB")
def test_exported_predictions_match_the_original(runs, image):
    name, results = runs
    (pred_logits, pred_masks), _, _ = results[image]
    expected = np.load(REF / f"{name}_{image}.npz")
    for actual, key in ((pred_logits, "pred_logits"), (pred_masks, "pred_masks")):
        assert tuple(actual.shape) == expected[key].shape
        diff = np.abs(actual.numpy() - expected[key]).max()
        assert diff <= 1e-3, f"{key}: max abs diff {diff}"


@pytest.mark.parametrize("image", "AB")
def test_exported_outputs_match_pytorch(runs, image):
    _, results = runs
    _, ours, theirs = results[image]
    assert set(ours) == set(theirs) == {"sem_seg", "panoptic_seg", "instances"}
    torch.testing.assert_close(ours["sem_seg"], theirs["sem_seg"], atol=2e-3, rtol=0)
    (seg, info), (seg_ref, info_ref) = ours["panoptic_seg"], theirs["panoptic_seg"]
    assert info == info_ref
    assert int((seg != seg_ref).sum()) <= 1e-4 * seg.numel()
    inst, inst_ref = ours["instances"], theirs["instances"]
    assert inst.image_size == inst_ref.image_size

    def by_pair(x):
        return {(q, c): i for i, (q, c) in enumerate(zip(x.query_indices.tolist(), x.pred_classes.tolist()))}

    pairs, pairs_ref = by_pair(inst), by_pair(inst_ref)
    assert sorted(pairs) == sorted(pairs_ref)
    for key, i in pairs.items():
        j = pairs_ref[key]
        assert abs(float(inst.scores[i]) - float(inst_ref.scores[j])) <= 1e-4
        a, b = inst.pred_masks[i] > 0, inst_ref.pred_masks[j] > 0
        union = int((a | b).sum())
        assert union == 0 or int((a & b).sum()) / union >= 0.999


def test_model_and_exported_predictor_share_one_postprocessing(monkeypatch, exported):
    model, files = exported["tiny_swin"]
    assert maskformer_model.maskformer_inference is inference.maskformer_inference
    assert predictor_module.maskformer_inference is inference.maskformer_inference
    calls = []

    def spy(*args):
        calls.append(args[-1])
        return inference.maskformer_inference(*args)

    monkeypatch.setattr(maskformer_model, "maskformer_inference", spy)
    monkeypatch.setattr(predictor_module, "maskformer_inference", spy)
    predictor = ExportedPredictor(files["onnx"], reference_cfg("tiny_swin"))
    inputs = [{"image": torch.zeros((3, 64, 96), dtype=torch.uint8)}]
    with torch.no_grad():
        model(inputs), predictor(inputs)
    # The same function with the same settings, built from the config for the predictor, from the model's own.
    assert len(calls) == 2 and calls[0] == calls[1]


def test_export_rejects_an_old_opset(exported, tmp_path):
    model, _ = exported["tiny_swin"]
    with pytest.raises(ValueError, match="opset 13 is too old.*>= 16"):
        export_model(model, reference_cfg("tiny_swin"), tmp_path / "x.onnx", "onnx", opset=13)
    assert not (tmp_path / "x.onnx").exists()


@pytest.mark.parametrize("name, fmt", CASES)
def test_exported_file_rejects_a_size_that_is_not_a_multiple(exported, name, fmt):
    predictor = ExportedPredictor(exported[name][1][fmt], reference_cfg(name))
    with pytest.raises(ValueError, match=r"257x391 is not a multiple of 32.*288x416"):
        predictor.run(torch.zeros((1, 3, 257, 391)))


@pytest.mark.parametrize("name, fmt", CASES)
def test_exported_file_rejects_another_config(exported, name, fmt):
    path = exported[name][1][fmt]
    other = next(n for n in exported if n != name)
    with pytest.raises(ValueError, match=r"exported from another config: MODEL.MASK_FORMER.HIDDEN_DIM: file 32, config 64"):
        ExportedPredictor(path, reference_cfg(name, ["MODEL.MASK_FORMER.HIDDEN_DIM 64"]))
    with pytest.raises(ValueError, match="MODEL.BACKBONE.NAME"):
        ExportedPredictor(path, reference_cfg(other))
    # Post-processing switches, the weights' location and the device are not part of the network.
    ExportedPredictor(path, reference_cfg(name, ["MODEL.MASK_FORMER.TEST.INSTANCE_ON False", "MODEL.WEIGHTS x"]))


def test_a_foreign_onnx_file_is_rejected(tmp_path):
    foreign = tmp_path / "foreign.onnx"
    with torch.no_grad():
        torch.onnx.export(torch.nn.Conv2d(3, 3, 1), (torch.zeros(1, 3, 8, 8),), str(foreign), dynamo=False)
    with pytest.raises(ValueError, match="not a Mask2Former export"):
        ExportedPredictor(foreign, reference_cfg("tiny_swin"))


def test_demo_runs_an_exported_file(exported, tmp_path):
    spec = json.loads((REF / "tiny_swin_overrides.json").read_text())
    demo = load_script(ROOT / "tools/demo.py")
    assert demo.main([
        "--config-file", str(CONFIGS.parent / spec["config"]), "--exported", str(exported["tiny_swin"][1]["onnx"]),
        "--input", str(REF / "image_B.png"), "--output", str(tmp_path), "--mode", "semantic",
        "--opts", *split_overrides(spec["overrides"] + spec["forced_overrides"] + ["INPUT.MIN_SIZE_TEST 256"]),
    ]) == 0
    assert (tmp_path / "image_B.png").is_file()
