"""Weight conversion tools: the converted files load into our backbones (SafeCheckpointer, name matching) and match."""
import json
import pickle

import numpy as np
import pytest
import torch
import torchvision
from detectron2.layers import ShapeSpec
from detectron2.modeling import build_backbone
from torch import nn

from conftest import CONFIGS, FIXTURES, ROOT, load_script, make_cfg
from mask2former.checkpoint import SafeCheckpointer


def _tool(name):
    return load_script(ROOT / "tools" / f"{name}.py")


def _with_backbone(cfg):
    """A model whose only child is ``backbone``, as the full detector names it."""
    model = nn.Module()
    model.backbone = build_backbone(cfg, ShapeSpec(channels=3))
    return model


def test_swin_conversion_loads_into_d2_swin(tmp_path, capsys):
    overrides = json.loads((FIXTURES / "reference_tiny/tiny_swin_overrides.json").read_text())["overrides"]
    cfg = make_cfg(CONFIGS / "coco/panoptic-segmentation/swin/maskformer2_swin_tiny_bs16_50ep.yaml", overrides)
    torch.manual_seed(0)
    source = _with_backbone(cfg).backbone.state_dict()
    # The official checkpoint: the backbone's names without detectron2's output norms (norm0..3), plus the final
    # norm, the classifier and the attention-mask buffers of shifted windows.
    official = {k: v for k, v in source.items() if not k.startswith(("norm0", "norm1", "norm2", "norm3"))}
    official.update(
        {
            "norm.weight": torch.ones(128),
            "norm.bias": torch.zeros(128),
            "head.weight": torch.randn(1000, 128),
            "head.bias": torch.zeros(1000),
            "layers.0.blocks.1.attn_mask": torch.zeros(4, 49, 49),
        }
    )
    pth = tmp_path / "swin_tiny_patch4_window7_224.pth"
    torch.save({"model": official}, pth)
    assert _tool("convert-pretrained-swin-model-to-d2").main([str(pth)]) == 0
    assert "swin_tiny_patch4_window7_224.pkl" in capsys.readouterr().out

    with open(tmp_path / "swin_tiny_patch4_window7_224.pkl", "rb") as f:
        converted = pickle.load(f)
    assert converted["__author__"] == "third_party" and converted["matching_heuristics"] is True
    weights = converted["model"]
    assert not any(k.startswith(("head.", "norm.")) for k in weights)
    assert all(isinstance(v, np.ndarray) for v in weights.values())

    torch.manual_seed(1)
    target = _with_backbone(cfg)
    SafeCheckpointer(target).load(str(tmp_path / "swin_tiny_patch4_window7_224.pkl"))
    loaded = target.backbone.state_dict()
    for key in official:
        if key in loaded:
            assert torch.equal(loaded[key], source[key]), key
    assert sum(key in loaded for key in official) == len(official) - 5  # all but the four dropped and attn_mask


def test_swin_conversion_rejects_other_files(tmp_path, capsys):
    path = tmp_path / "bare.pth"
    torch.save({"patch_embed.proj.weight": torch.zeros(1)}, path)
    assert _tool("convert-pretrained-swin-model-to-d2").main([str(path), str(tmp_path / "out.pkl")]) == 2
    assert "expected a dict with the state dict under 'model'" in capsys.readouterr().err


def test_torchvision_r50_conversion_gives_the_same_features(tmp_path):
    torch.manual_seed(0)
    resnet = torchvision.models.resnet50(weights=None).eval()
    with torch.no_grad():  # non-trivial batch-norm statistics, so a misnamed one would show
        for m in resnet.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.2, 0.2)
    pth = tmp_path / "resnet50.pth"
    torch.save(resnet.state_dict(), pth)
    tool = _tool("convert-torchvision-to-d2")
    assert tool.main([str(pth), str(tmp_path / "R-50.pkl")]) == 0
    with open(tmp_path / "R-50.pkl", "rb") as f:
        converted = pickle.load(f)
    assert converted["__author__"] == "torchvision" and converted["matching_heuristics"] is True
    assert not any(k.startswith("fc.") or "num_batches_tracked" in k for k in converted["model"])

    cfg = make_cfg(CONFIGS / "coco/panoptic-segmentation/maskformer2_R50_bs16_50ep.yaml", ["MODEL.WEIGHTS ''"])
    model = _with_backbone(cfg).eval()
    SafeCheckpointer(model).load(str(tmp_path / "R-50.pkl"))
    assert set(converted["model"]) == {k[len("backbone.") :] for k in model.state_dict()}

    x = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        ours = model.backbone(x)
        y = resnet.maxpool(resnet.relu(resnet.bn1(resnet.conv1(x))))
        for i, layer in enumerate((resnet.layer1, resnet.layer2, resnet.layer3, resnet.layer4), 2):
            y = layer(y)
            torch.testing.assert_close(ours[f"res{i}"], y, rtol=1e-4, atol=1e-4)


def test_torchvision_names():
    name = _tool("convert-torchvision-to-d2").torchvision_to_d2_name
    assert name("conv1.weight") == "stem.conv1.weight"
    assert name("bn1.running_var") == "stem.conv1.norm.running_var"
    assert name("layer1.0.conv3.weight") == "res2.0.conv3.weight"
    assert name("layer4.2.bn2.bias") == "res5.2.conv2.norm.bias"
    assert name("layer3.0.downsample.0.weight") == "res4.0.shortcut.weight"
    assert name("layer2.0.downsample.1.running_mean") == "res3.0.shortcut.norm.running_mean"


def test_torchvision_conversion_rejects_other_files(tmp_path, capsys):
    path = tmp_path / "other.pth"
    torch.save({"model": {}}, path)
    assert _tool("convert-torchvision-to-d2").main([str(path), str(tmp_path / "out.pkl")]) == 2
    assert "not a torchvision ResNet state dict" in capsys.readouterr().err


@pytest.mark.parametrize("tool", ["convert-pretrained-swin-model-to-d2", "convert-torchvision-to-d2"])
def test_truncated_input_is_reported(tmp_path, capsys, tool):
    path = tmp_path / "cut.pth"
    torch.save({"model": {"conv1.weight": torch.zeros(64, 3, 7, 7)}}, path)
    path.write_bytes(path.read_bytes()[:200])
    assert _tool(tool).main([str(path), str(tmp_path / "out.pkl")]) == 2
    assert f"{path} is truncated or damaged" in capsys.readouterr().err
    assert not (tmp_path / "out.pkl").exists()
    assert _tool(tool).main([str(tmp_path / "missing.pth"), str(tmp_path / "out.pkl")]) == 2
    assert f"{tmp_path / 'missing.pth'} does not exist" in capsys.readouterr().err
