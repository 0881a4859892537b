"""The installed stack imports and works: detectron2 (without its compiled _C), its projects, panopticapi, torchvision ops."""
import importlib

import torch


def test_stack_imports():
    for name in [
        "detectron2",
        "detectron2.engine",
        "detectron2.projects.deeplab",
        "detectron2.projects.point_rend",
        "panopticapi.evaluation",
        "pycocotools.mask",
        "fvcore.nn",
        "timm",
        "scipy.optimize",
        "cv2",
        "mask2former",
    ]:
        importlib.import_module(name)


def test_torchvision_ops_run_on_cpu():
    from torchvision.ops import nms, roi_align

    boxes = torch.tensor([[0.0, 0.0, 10.0, 10.0], [1.0, 1.0, 11.0, 11.0], [50.0, 50.0, 60.0, 60.0]])
    keep = nms(boxes, torch.tensor([0.9, 0.8, 0.7]), iou_threshold=0.5)
    assert keep.tolist() == [0, 2]
    feat = torch.arange(16.0).view(1, 1, 4, 4)
    pooled = roi_align(feat, [torch.tensor([[0.0, 0.0, 4.0, 4.0]])], output_size=(2, 2), spatial_scale=1.0, aligned=True)
    assert pooled.shape == (1, 1, 2, 2)
    # Mean of each 2x2 quadrant of the 4x4 ramp.
    assert torch.allclose(pooled.flatten(), torch.tensor([2.5, 4.5, 10.5, 12.5]))


def test_add_maskformer2_config_is_public_api():
    from detectron2.config import get_cfg
    from detectron2.projects.deeplab import add_deeplab_config

    from mask2former import add_maskformer2_config

    cfg = get_cfg()
    add_deeplab_config(cfg)
    add_maskformer2_config(cfg)
    assert cfg.MODEL.MASK_FORMER.NUM_OBJECT_QUERIES == 100
    assert cfg.MODEL.SWIN.WINDOW_SIZE == 7
