"""Every zoo config builds into a model whose state_dict has exactly the released checkpoints' names and shapes."""
import json

import pytest
import torch
from detectron2.modeling import build_model

from conftest import CONFIGS, FIXTURES, ZOO_CONFIGS, make_cfg


@pytest.mark.parametrize("config", ZOO_CONFIGS)
def test_state_dict_matches_released_layout(config):
    expected = json.loads((FIXTURES / "original_keys" / config).with_suffix(".json").read_text())
    cfg = make_cfg(CONFIGS / config, ["MODEL.DEVICE meta", "MODEL.WEIGHTS ''"])
    # Names, shapes and dtypes do not depend on values: the meta device builds even Swin-L in a second.
    with torch.device("meta"):
        model = build_model(cfg)
    ours = [[k, list(v.shape), str(v.dtype).replace("torch.", "")] for k, v in model.state_dict().items()]
    assert [e[0] for e in ours] == [e[0] for e in expected["state_dict"]]
    assert ours == expected["state_dict"]
    assert sum(p.numel() for p in model.parameters()) == expected["total_parameters"]
    persistent = {name for name, _ in model.named_buffers()} & {e[0] for e in ours}
    assert sorted(persistent) == sorted(expected["buffers_in_state_dict"])
    assert {"pixel_mean", "pixel_std"} == {name for name, _ in model.named_buffers()} - persistent
