"""Fine-tuning from a checkpoint with other classes or queries: the class head / queries start fresh, the rest loads."""
import logging

import pytest
import torch
from detectron2.modeling import build_model

from conftest import R50, TINY_MODEL, make_cfg
from mask2former.checkpoint import SafeCheckpointer
from mask2former.checkpoint.fine_tuning import explain_shape_mismatch

# The tiny model (6 classes, 100 queries), semantic outputs only so that no dataset metadata is needed.
TINY = TINY_MODEL + ["MODEL.MASK_FORMER.TEST.PANOPTIC_ON False", "MODEL.MASK_FORMER.TEST.INSTANCE_ON False"]
CLASS_HEAD = {
    "sem_seg_head.predictor.class_embed.weight": ((7, 32), (4, 32)),
    "sem_seg_head.predictor.class_embed.bias": ((7,), (4,)),
    "criterion.empty_weight": ((7,), (4,)),
}
QUERIES = {
    "sem_seg_head.predictor.query_feat.weight": ((100, 32), (20, 32)),
    "sem_seg_head.predictor.query_embed.weight": ((100, 32), (20, 32)),
}


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """A checkpoint of the tiny model, and its state."""
    folder = tmp_path_factory.mktemp("checkpoint")
    torch.manual_seed(0)
    model = build_model(make_cfg(R50, TINY))
    SafeCheckpointer(model, str(folder)).save("model_final")
    return folder / "model_final.pth", {k: v.clone() for k, v in model.state_dict().items()}


class _Records(logging.Handler):
    def __init__(self):
        super().__init__(logging.INFO)
        self.records = []

    def emit(self, record):
        self.records.append(record)


def _load_logged(model, path):
    """Load ``path`` into ``model`` with the project's checkpointer; the log records of the load."""
    checkpointer = SafeCheckpointer(model)
    handler, level = _Records(), checkpointer.logger.level
    checkpointer.logger.addHandler(handler)
    checkpointer.logger.setLevel(logging.INFO)
    try:
        checkpointer.load(str(path))
    finally:
        checkpointer.logger.removeHandler(handler)
        checkpointer.logger.setLevel(level)
    return handler.records


@pytest.mark.parametrize(
    "overrides, skipped",
    [
        (["MODEL.SEM_SEG_HEAD.NUM_CLASSES 3"], CLASS_HEAD),
        (["MODEL.MASK_FORMER.NUM_OBJECT_QUERIES 20"], QUERIES),
        (["MODEL.SEM_SEG_HEAD.NUM_CLASSES 3", "MODEL.MASK_FORMER.NUM_OBJECT_QUERIES 20"], {**CLASS_HEAD, **QUERIES}),
    ],
    ids=["classes", "queries", "both"],
)
def test_other_classes_or_queries_start_fresh_and_everything_else_loads(saved, overrides, skipped):
    path, saved_state = saved
    torch.manual_seed(1)
    model = build_model(make_cfg(R50, TINY + overrides))
    fresh = {k: v.clone() for k, v in model.state_dict().items()}
    records = _load_logged(model, path)

    state = model.state_dict()
    assert state.keys() == saved_state.keys()
    for name, value in state.items():
        if name in skipped:
            assert tuple(value.shape) == skipped[name][1] and torch.equal(value, fresh[name]), name
        else:
            assert torch.equal(value, saved_state[name]), name

    lines = [r.getMessage() for r in records if r.getMessage().startswith("Not loaded, starts fresh: ")]
    assert sorted(line.split(": ")[1] for line in lines) == sorted(skipped)
    for line in lines:
        name = line.split(": ")[1]
        (checkpoint_shape, model_shape) = skipped[name]
        assert f"shape {checkpoint_shape} in the checkpoint, {model_shape} in the model" in line
        if name in CLASS_HEAD:
            assert "6 classes in the checkpoint, 3 in the model (MODEL.SEM_SEG_HEAD.NUM_CLASSES)" in line
        else:
            assert "100 queries in the checkpoint, 20 in the model (MODEL.MASK_FORMER.NUM_OBJECT_QUERIES)" in line
    assert any(f"{len(skipped)} of the model's {len(state)} tensors start fresh" in r.getMessage() for r in records)
    # Expected for fine-tuning: nothing at warning level, and the skipped tensors are not listed again as missing.
    assert [r.getMessage() for r in records if r.levelno >= logging.WARNING] == []


def test_same_classes_and_queries_load_everything(saved):
    path, saved_state = saved
    model = build_model(make_cfg(R50, TINY))
    records = _load_logged(model, path)
    assert all(torch.equal(v, saved_state[k]) for k, v in model.state_dict().items())
    assert not [r for r in records if "starts fresh" in r.getMessage() or r.levelno >= logging.WARNING]


def test_other_mismatches_are_called_architecture_differences():
    assert explain_shape_mismatch("sem_seg_head.predictor.class_embed.weight", (134, 256), (21, 256)) == (
        True,
        "shape (134, 256) in the checkpoint, (21, 256) in the model: 133 classes in the checkpoint, 20 in the "
        "model (MODEL.SEM_SEG_HEAD.NUM_CLASSES)",
    )
    expected, reason = explain_shape_mismatch("sem_seg_head.predictor.class_embed.weight", (134, 256), (134, 128))
    assert not expected and "another architecture" in reason
    expected, reason = explain_shape_mismatch("backbone.res2.0.conv1.weight", (64, 64, 1, 1), (32, 64, 1, 1))
    assert not expected and "shape (64, 64, 1, 1) in the checkpoint, (32, 64, 1, 1) in the model" in reason
