"""Every zoo config builds on CPU into a model whose state_dict has exactly the released checkpoints' names and shapes."""
import json

import pytest
import torch
from detectron2.modeling import build_model

from conftest import CONFIGS, FIXTURES, make_cfg
from test_config import ZOO


@pytest.mark.parametrize("stem", sorted(ZOO))
def test_state_dict_matches_released_layout(stem):
    expected = json.loads((FIXTURES / "zoo_keys" / f"keys_{stem}.json").read_text())
    cfg = make_cfg(CONFIGS / ZOO[stem], ["MODEL.DEVICE cpu", "MODEL.WEIGHTS ''"])
    torch.manual_seed(0)
    model = build_model(cfg)
    ours = [[k, list(v.shape), str(v.dtype).replace("torch.", "")] for k, v in model.state_dict().items()]
    assert [e[0] for e in ours] == [e[0] for e in expected["state_dict"]]
    assert ours == expected["state_dict"]
    assert sum(p.numel() for p in model.parameters()) == expected["total_parameters"]
    persistent = {name for name, _ in model.named_buffers()} & {e[0] for e in ours}
    assert sorted(persistent) == sorted(expected["buffers_in_state_dict"])
    assert {"pixel_mean", "pixel_std"} == {name for name, _ in model.named_buffers()} - persistent
