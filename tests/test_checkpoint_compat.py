"""
Released checkpoints come in several shapes; all of them must load into the same model:
an OrderedDict with torch's ``_metadata`` or a plain dict, numpy arrays or tensors, and the earlier head layout
in which the pixel decoder's weights sit directly under ``sem_seg_head.``.
"""
import collections
import pickle

import pytest
import torch
from detectron2.checkpoint import DetectionCheckpointer

from test_reference_tiny import REF, build_reference_model, build_tiny_model


@pytest.fixture(scope="module")
def released():
    with open(REF / "tiny_r50.pkl", "rb") as f:
        checkpoint = pickle.load(f)
    assert hasattr(checkpoint["model"], "_metadata")
    return checkpoint


@pytest.fixture(scope="module")
def reference_state():
    return build_reference_model("tiny_r50").state_dict()


def _old_layout(weights):
    prefix = "sem_seg_head.pixel_decoder."
    return {("sem_seg_head." + k[len(prefix):] if k.startswith(prefix) else k): v for k, v in weights.items()}


def _load(model, path):
    extra = DetectionCheckpointer(model).load(str(path))
    return model.state_dict(), extra


def _variants(released):
    weights = released["model"]
    meta = {k: v for k, v in released.items() if k != "model"}
    with_metadata_old = collections.OrderedDict(_old_layout(weights))
    # An earlier-format file: module versions recorded before the head was versioned.
    with_metadata_old._metadata = collections.OrderedDict(
        (k, {"version": 1}) if k == "sem_seg_head" else (k, v) for k, v in weights._metadata.items()
    )
    return {
        "plain_dict_new_names": {**meta, "model": dict(weights)},
        "plain_dict_old_layout": {**meta, "model": _old_layout(weights)},
        "ordered_dict_old_layout_with_metadata": {**meta, "model": with_metadata_old},
    }


@pytest.mark.parametrize(
    "variant", ["plain_dict_new_names", "plain_dict_old_layout", "ordered_dict_old_layout_with_metadata"]
)
def test_pickle_variants_load_to_the_same_model(tmp_path, released, reference_state, variant):
    path = tmp_path / f"{variant}.pkl"
    with open(path, "wb") as f:
        pickle.dump(_variants(released)[variant], f)
    state, _ = _load(build_tiny_model("tiny_r50"), path)
    assert state.keys() == reference_state.keys()
    for key, value in reference_state.items():
        assert torch.equal(state[key], value), key


def test_tensor_checkpoint_loads_to_the_same_model(tmp_path, released, reference_state):
    path = tmp_path / "tensors.pth"
    torch.save({"model": {k: torch.from_numpy(v) for k, v in _old_layout(released["model"]).items()}}, path)
    state, _ = _load(build_tiny_model("tiny_r50"), path)
    for key, value in reference_state.items():
        assert torch.equal(state[key], value), key


def test_checkpoint_without_criterion_buffer_loads(tmp_path, released, reference_state):
    # Some user checkpoints lack criterion.empty_weight (only the training loss uses it).
    weights = {k: v for k, v in released["model"].items() if k != "criterion.empty_weight"}
    path = tmp_path / "no_criterion.pkl"
    with open(path, "wb") as f:
        pickle.dump({"model": weights, "__author__": "user", "matching_heuristics": False}, f)
    state, _ = _load(build_tiny_model("tiny_r50"), path)
    for key, value in reference_state.items():
        assert torch.equal(state[key], value), key
