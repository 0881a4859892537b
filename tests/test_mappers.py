"""
The MaskFormer training mappers (semantic, panoptic, instance) and coco_instance_lsj on small synthetic inputs
whose targets are known: shapes, ignore label, size divisibility, the category-area crop, flips, empty targets.
"""
import random

import numpy as np
import pycocotools.mask as mask_util
import pytest
import torch
import yaml
from detectron2.config import CfgNode
from detectron2.data import MetadataCatalog
from detectron2.structures import BoxMode
from panopticapi.utils import id2rgb
from PIL import Image

from conftest import FIXTURES, R50, make_cfg
from mask2former.data import build_train_mapper
from mask2former.data.dataset_mappers import TRAIN_MAPPERS

TRAIN_NAME = "mappers_test_train"  # metadata only: the semantic and panoptic mappers read its ignore_label
IGNORE = 7
MetadataCatalog.get(TRAIN_NAME).set(ignore_label=IGNORE)

# The MaskFormer mappers without randomness: no resize (shortest edge = image height), crop, colour or flip.
PLAIN = [
    f"DATASETS.TRAIN ('{TRAIN_NAME}',)",
    f"MODEL.SEM_SEG_HEAD.IGNORE_VALUE {IGNORE}",
    "INPUT.FORMAT RGB",
    "INPUT.MIN_SIZE_TRAIN (40,)",
    "INPUT.MAX_SIZE_TRAIN 1000",
    "INPUT.CROP.ENABLED False",
    "INPUT.COLOR_AUG_SSD False",
    "INPUT.RANDOM_FLIP none",
    "INPUT.SIZE_DIVISIBILITY 32",
]
H, W = 40, 60


def _mapper(name, overrides=()):
    return build_train_mapper(make_cfg(R50, [f"INPUT.DATASET_MAPPER_NAME {name}", *PLAIN, *overrides]))


def _seeded(mapper, dataset_dict, seed):
    np.random.seed(seed)
    random.seed(seed)
    torch.manual_seed(seed)
    return mapper(dataset_dict)


def _save(path, array):
    Image.fromarray(array).save(path)
    return str(path)


def _gradient_image(height, width):
    """An RGB image with distinct, left-right asymmetric pixels: red = column, green = row."""
    image = np.zeros((height, width, 3), dtype=np.uint8)
    image[..., 0] = np.arange(width)[None, :]
    image[..., 1] = np.arange(height)[:, None] * 3
    image[..., 2] = 50
    return image


def _chw(array):
    return torch.from_numpy(np.ascontiguousarray(array.transpose(2, 0, 1)))


def _padded(array, size, value):
    """``array`` (H, W, ...) padded at the bottom and right to ``size`` x ``size``."""
    pad = [(0, size - array.shape[0]), (0, size - array.shape[1])] + [(0, 0)] * (array.ndim - 2)
    return np.pad(array, pad, constant_values=value)


# Semantic labels: left half class 1, right half class 4, the top 10 rows ignored.
LABELS = np.ones((H, W), dtype=np.uint8)
LABELS[:, 30:] = 4
LABELS[:10] = IGNORE


@pytest.fixture(scope="module")
def semantic_dict(tmp_path_factory):
    root = tmp_path_factory.mktemp("semantic")
    return {
        "file_name": _save(root / "image.png", _gradient_image(H, W)),
        "sem_seg_file_name": _save(root / "labels.png", LABELS),
    }


def test_semantic_targets_ignore_label_and_size_divisibility(semantic_dict):
    out = _mapper("mask_former_semantic")(semantic_dict)
    image, sem_seg, instances = out["image"], out["sem_seg"], out["instances"]
    assert image.dtype == torch.uint8 and image.shape == (3, 64, 64)
    assert torch.equal(image, _chw(_padded(_gradient_image(H, W), 64, 128)))
    assert sem_seg.dtype == torch.int64 and torch.equal(sem_seg, torch.from_numpy(_padded(LABELS, 64, IGNORE)).long())
    # One target per class present, in class order; ignored and padded pixels are in none.
    assert instances.gt_classes.tolist() == [1, 4]
    expected = _padded(LABELS, 64, IGNORE)
    assert torch.equal(instances.gt_masks, torch.from_numpy(np.stack([expected == 1, expected == 4])))
    assert instances.image_size == (64, 64)
    assert "sem_seg_file_name" not in out and "sem_seg_file_name" in semantic_dict, "the input dict is not changed"


def test_semantic_image_without_labels_has_empty_targets(semantic_dict, tmp_path):
    ignored = dict(semantic_dict, sem_seg_file_name=_save(tmp_path / "ignored.png", np.full((H, W), IGNORE, np.uint8)))
    instances = _mapper("mask_former_semantic", ["INPUT.SIZE_DIVISIBILITY -1"])(ignored)["instances"]
    assert instances.gt_masks.shape == (0, H, W) and instances.gt_classes.shape == (0,)


def test_semantic_flip_moves_image_and_labels_together(semantic_dict):
    mapper = _mapper("mask_former_semantic", ["INPUT.RANDOM_FLIP horizontal", "INPUT.SIZE_DIVISIBILITY -1"])
    image, labels = _chw(_gradient_image(H, W)), torch.from_numpy(LABELS).long()
    flipped = 0
    for seed in range(10):
        out = _seeded(mapper, semantic_dict, seed)
        is_flipped = not torch.equal(out["image"], image)
        flipped += is_flipped
        assert torch.equal(out["image"], image.flip(-1) if is_flipped else image)
        assert torch.equal(out["sem_seg"], labels.flip(-1) if is_flipped else labels)
        # Class 1 (the left half) is on the right after a flip.
        left = out["instances"].gt_masks[0][10:, :30]
        assert bool(left.all()) != is_flipped and (bool(left.any()) != is_flipped)
    assert 0 < flipped < 10


def test_color_augmentation_changes_colours_only(semantic_dict):
    mapper = _mapper("mask_former_semantic", ["INPUT.COLOR_AUG_SSD True", "INPUT.SIZE_DIVISIBILITY -1"])
    image = _chw(_gradient_image(H, W))
    changed = 0
    for seed in range(4):
        out = _seeded(mapper, semantic_dict, seed)
        changed += not torch.equal(out["image"], image)
        assert torch.equal(out["sem_seg"], torch.from_numpy(LABELS).long())
    assert changed > 0


# Category-area crop: a 32 x 128 image, fine stripes of classes 2 and 3 on the left half, class 1 alone on the
# right. A 32 x 32 crop with more than 19 columns of the right half has one class above 60% of its pixels.
CROP_LABELS = np.where((np.arange(128) // 4) % 2 == 0, 2, 3).astype(np.uint8)[None, :].repeat(32, 0)
CROP_LABELS[:, 64:] = 1


@pytest.fixture(scope="module")
def crop_dict(tmp_path_factory):
    root = tmp_path_factory.mktemp("crop")
    image = np.zeros((32, 128, 3), dtype=np.uint8)
    image[..., 0] = np.arange(128)[None, :]  # red = column: tells where a crop was taken
    return {
        "file_name": _save(root / "image.png", image),
        "sem_seg_file_name": _save(root / "labels.png", CROP_LABELS),
    }


def _crop_shares(out):
    """The largest class share of the crop, after checking its labels are the input's at the crop position."""
    x0 = int(out["image"][0, 0, 0])
    assert out["image"].shape == (3, 32, 32)
    assert torch.equal(out["sem_seg"], torch.from_numpy(CROP_LABELS[:, x0 : x0 + 32]).long())
    _, counts = np.unique(out["sem_seg"].numpy(), return_counts=True)
    return counts.max() / counts.sum(), len(counts)


@pytest.mark.parametrize("name", ["mask_former_semantic", "mask_former_panoptic"])
def test_category_area_crop_keeps_several_categories(crop_dict, tmp_path, name):
    crop = ["INPUT.MIN_SIZE_TRAIN (32,)", "INPUT.CROP.ENABLED True", "INPUT.CROP.TYPE absolute"]
    crop += ["INPUT.CROP.SIZE (32,32)", "INPUT.SIZE_DIVISIBILITY -1"]
    dataset_dict = crop_dict
    if name == "mask_former_panoptic":  # the panoptic mapper constrains its crop by the semantic labels too
        ids = CROP_LABELS.astype(np.uint32) * 100
        dataset_dict = dict(crop_dict, pan_seg_file_name=_save(tmp_path / "pan.png", id2rgb(ids)))
        dataset_dict["segments_info"] = [{"id": c * 100, "category_id": c, "iscrowd": 0} for c in (1, 2, 3)]
    constrained = _mapper(name, crop + ["INPUT.CROP.SINGLE_CATEGORY_MAX_AREA 0.6"])
    unconstrained = _mapper(name, crop + ["INPUT.CROP.SINGLE_CATEGORY_MAX_AREA 1.0"])
    violations = 0
    for seed in range(20):
        share, num_classes = _crop_shares(_seeded(constrained, dataset_dict, seed))
        assert share < 0.6 and num_classes > 1, f"seed {seed}: one class covers {share:.0%} of the crop"
        violations += _crop_shares(_seeded(unconstrained, dataset_dict, seed))[0] >= 0.6
    assert violations > 0, "without the constraint some crops are mostly one class"


# Panoptic: four segments tiling the image, one of them crowd.
SEGMENTS = [(11, 0, 0, (0, 20, 0, 30)), (22, 3, 0, (0, 20, 30, 60)), (33, 1, 1, (20, 40, 0, 30))]
SEGMENTS += [(44, 5, 0, (20, 40, 30, 60))]


@pytest.fixture(scope="module")
def panoptic_dict(tmp_path_factory):
    root = tmp_path_factory.mktemp("panoptic")
    ids = np.zeros((H, W), dtype=np.uint32)
    for segment_id, _, _, (y0, y1, x0, x1) in SEGMENTS:
        ids[y0:y1, x0:x1] = segment_id
    segments_info = [{"id": s, "category_id": c, "iscrowd": crowd} for s, c, crowd, _ in SEGMENTS]
    # Segment 55 is in the annotations but not in the PNG: a segment out of view.
    segments_info.append({"id": 55, "category_id": 2, "iscrowd": 0})
    return {
        "file_name": _save(root / "image.png", _gradient_image(H, W)),
        "pan_seg_file_name": _save(root / "pan.png", id2rgb(ids)),
        "sem_seg_file_name": _save(root / "labels.png", LABELS),
        "segments_info": segments_info,
    }


def test_panoptic_targets_follow_the_segments(panoptic_dict):
    out = _mapper("mask_former_panoptic")(panoptic_dict)
    instances = out["instances"]
    assert out["image"].shape == (3, 64, 64)
    assert torch.equal(out["sem_seg"], torch.from_numpy(_padded(LABELS, 64, IGNORE)).long())
    assert instances.gt_classes.tolist() == [0, 3, 5, 2], "non-crowd segments in order, the absent one included"
    expected = []
    for y0, y1, x0, x1 in [s[3] for s in SEGMENTS if not s[2]]:
        mask = np.zeros((64, 64), dtype=bool)
        mask[y0:y1, x0:x1] = True
        expected.append(mask)
    expected.append(np.zeros((64, 64), dtype=bool))
    assert instances.gt_masks.dtype == torch.bool and torch.equal(instances.gt_masks, torch.from_numpy(np.stack(expected)))
    without_sem_seg = {k: v for k, v in panoptic_dict.items() if k != "sem_seg_file_name"}
    assert "sem_seg" not in _mapper("mask_former_panoptic")(without_sem_seg)


def test_panoptic_dict_needs_its_png(semantic_dict):
    with pytest.raises(ValueError, match="has no 'pan_seg_file_name'"):
        _mapper("mask_former_panoptic")(dict(semantic_dict, segments_info=[]))


# Instances: a rectangle and an asymmetric triangle as polygons, a square as RLE, a crowd region.
def _rle(y0, y1, x0, x1):
    mask = np.zeros((H, W), dtype=np.uint8)
    mask[y0:y1, x0:x1] = 1
    return mask_util.encode(np.asfortranarray(mask))


ANNOTATIONS = [
    {"category_id": 2, "segmentation": [[4.0, 4.0, 24.0, 4.0, 24.0, 16.0, 4.0, 16.0]], "bbox": [4, 4, 20, 12]},
    {"category_id": 4, "segmentation": [[30.0, 20.0, 58.0, 20.0, 30.0, 38.0]], "bbox": [30, 20, 28, 18]},
    {"category_id": 1, "segmentation": _rle(24, 36, 4, 16), "bbox": [4, 24, 12, 12]},
    {"category_id": 3, "segmentation": [[0.0, 0.0, 60.0, 0.0, 60.0, 40.0]], "bbox": [0, 0, 60, 40], "iscrowd": 1},
]


@pytest.fixture(scope="module")
def instance_dict(tmp_path_factory):
    root = tmp_path_factory.mktemp("instance")
    annotations = [dict(a, bbox_mode=BoxMode.XYWH_ABS, iscrowd=a.get("iscrowd", 0)) for a in ANNOTATIONS]
    return {"file_name": _save(root / "image.png", _gradient_image(H, W)), "annotations": annotations}


def _rectangle(y0, y1, x0, x1, size=(H, W)):
    mask = np.zeros(size, dtype=bool)
    mask[y0:y1, x0:x1] = True
    return mask


def _triangle(flipped=False):
    """Pixels whose centre lies strictly inside the triangle (30, 20), (58, 20), (30, 38)."""
    yy, xx = np.mgrid[:H, :W] + 0.5
    if flipped:
        xx = W - xx
    return (xx > 30) & (yy > 20) & ((xx - 30) / 28 + (yy - 20) / 18 < 1)


def _agree(mask, expected):
    """The rasterized mask matches the shape up to its boundary pixels."""
    mask = mask.numpy().astype(bool)
    return (mask ^ expected).sum() <= 0.15 * expected.sum()


def test_instance_targets_and_size_divisibility(instance_dict):
    out = _mapper("mask_former_instance")(instance_dict)
    instances = out["instances"]
    assert torch.equal(out["image"], _chw(_padded(_gradient_image(H, W), 64, 128)))
    assert instances.gt_classes.tolist() == [2, 4, 1], "the crowd annotation is no target"
    masks = instances.gt_masks
    assert masks.dtype == torch.bool and masks.shape == (3, 64, 64)
    assert not masks[:, H:].any() and not masks[:, :, W:].any(), "padding belongs to no mask"
    assert _agree(masks[0, :H, :W], _rectangle(4, 16, 4, 24)) and _agree(masks[1, :H, :W], _triangle())
    assert torch.equal(masks[2, :H, :W], torch.from_numpy(_rectangle(24, 36, 4, 16))), "RLE masks are exact"
    assert "annotations" not in out and "annotations" in instance_dict


def test_instance_flip_moves_masks_with_the_image(instance_dict):
    mapper = _mapper("mask_former_instance", ["INPUT.RANDOM_FLIP horizontal", "INPUT.SIZE_DIVISIBILITY -1"])
    image = _chw(_gradient_image(H, W))
    flipped = 0
    for seed in range(8):
        out = _seeded(mapper, instance_dict, seed)
        is_flipped = not torch.equal(out["image"], image)
        flipped += is_flipped
        assert torch.equal(out["image"], image.flip(-1) if is_flipped else image)
        masks = out["instances"].gt_masks
        square = _rectangle(24, 36, 4, 16)
        assert torch.equal(masks[2], torch.from_numpy(square[:, ::-1].copy() if is_flipped else square))
        assert _agree(masks[1], _triangle(flipped=is_flipped))
    assert 0 < flipped < 8


def test_instance_image_without_annotations_has_empty_targets(instance_dict):
    out = _mapper("mask_former_instance")(dict(instance_dict, annotations=[ANNOTATIONS[3] | {"bbox_mode": BoxMode.XYWH_ABS}]))
    assert out["instances"].gt_masks.shape == (0, 64, 64) and len(out["instances"].gt_classes) == 0


# coco_instance_lsj: a 48 x 64 image fits a 64 box at scale 1; larger scales crop.
def _lsj(scale, flip="none"):
    opts = ["INPUT.IMAGE_SIZE 64", f"INPUT.MIN_SCALE {scale}", f"INPUT.MAX_SCALE {scale}", f"INPUT.RANDOM_FLIP {flip}"]
    return build_train_mapper(make_cfg(R50, ["INPUT.DATASET_MAPPER_NAME coco_instance_lsj", *opts]))


@pytest.fixture(scope="module")
def lsj_dict(tmp_path_factory):
    root = tmp_path_factory.mktemp("lsj_instance")
    annotations = [dict(a, bbox_mode=BoxMode.XYWH_ABS, iscrowd=a.get("iscrowd", 0)) for a in ANNOTATIONS]
    annotations = [a for a in annotations if isinstance(a["segmentation"], list)]  # the original takes polygons
    return {"file_name": _save(root / "image.png", _gradient_image(48, 64)), "annotations": annotations}


def test_lsj_instance_targets_and_padding_mask(lsj_dict):
    out = _lsj(1.0)(lsj_dict)
    image, instances = out["image"], out["instances"]
    assert image.shape == (3, 64, 64) and torch.equal(image[:, :48], _chw(_gradient_image(48, 64)))
    assert (image[:, 48:] == 128).all()
    assert out["padding_mask"].dtype == torch.bool
    assert out["padding_mask"][48:].all() and not out["padding_mask"][:48].any()
    assert instances.gt_classes.tolist() == [2, 4]
    masks = instances.gt_masks
    assert masks.dtype == torch.uint8 and masks.shape == (2, 64, 64)
    assert _agree(masks[0, :H, :W], _rectangle(4, 16, 4, 24)) and _agree(masks[1, :H, :W], _triangle())
    # Boxes are the extents of the (cropped) polygons.
    assert instances.gt_boxes.tensor.tolist() == [[4, 4, 24, 16], [30, 20, 58, 38]]


def test_lsj_instance_drops_annotations_the_crop_leaves_out(lsj_dict):
    """At scale 3 (192 x 144) a 64 x 64 crop often misses an annotation: only visible ones are targets."""
    mapper = _lsj(3.0)
    missed = 0
    for seed in range(10):
        instances = _seeded(mapper, lsj_dict, seed)["instances"]
        assert instances.gt_masks.flatten(1).any(1).all()
        assert instances.gt_classes.tolist() in ([2, 4], [2], [4], [])
        missed += len(instances) < 2
    assert missed > 0
    empty = _lsj(1.0)(dict(lsj_dict, annotations=[]))["instances"]
    assert empty.gt_masks.shape == (0, 64, 64) and empty.gt_boxes.tensor.shape == (0, 4)


def test_lsj_instance_accepts_rle(instance_dict):
    instances = _lsj(1.0)(dict(instance_dict, annotations=[instance_dict["annotations"][2]]))["instances"]
    assert instances.gt_classes.tolist() == [1]
    # 60 x 40 scaled by 64/60: the 12 x 12 square at (4, 24) becomes about 13 x 13 at (4, 26).
    ys, xs = np.nonzero(instances.gt_masks[0].numpy())
    assert abs(ys.min() - 25.6) <= 1 and abs(xs.min() - 4.3) <= 1 and abs(len(ys) - 12.8**2) < 30


def test_public_names_and_original_constructor():
    import mask2former
    import mask2former.data

    names = ["COCOInstanceNewBaselineDatasetMapper", "COCOPanopticNewBaselineDatasetMapper"]
    names += ["MaskFormerInstanceDatasetMapper", "MaskFormerPanopticDatasetMapper", "MaskFormerSemanticDatasetMapper"]
    mapper_names = ["coco_instance_lsj", "coco_panoptic_lsj", "mask_former_instance", "mask_former_panoptic"]
    mapper_names += ["mask_former_semantic"]
    for name, mapper_name in zip(names, mapper_names):
        cls = getattr(mask2former, name)
        assert getattr(mask2former.data, name) is cls and TRAIN_MAPPERS[mapper_name] is cls
        cfg = make_cfg(R50, [f"INPUT.DATASET_MAPPER_NAME {mapper_name}", *PLAIN])
        assert isinstance(cls(cfg, True), cls)  # as the original's train_net.py builds them
        with pytest.raises(ValueError, match="training only"):
            cls(cfg, is_train=False)


def test_every_original_config_names_an_available_mapper():
    """Each of the original's 47 configs builds the mapper it names from its INPUT section."""
    files = sorted((FIXTURES / "original_configs").rglob("*.yaml"))
    assert len(files) == 47
    base = make_cfg(R50, [f"DATASETS.TRAIN ('{TRAIN_NAME}',)"])
    for path in files:
        inputs = yaml.load(path.read_text(), Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))["INPUT"]
        assert inputs["DATASET_MAPPER_NAME"] in TRAIN_MAPPERS, path
        cfg = base.clone()
        cfg.merge_from_other_cfg(CfgNode({"INPUT": inputs}))
        mapper = build_train_mapper(cfg)
        assert type(mapper) is TRAIN_MAPPERS[inputs["DATASET_MAPPER_NAME"]]


def test_missing_ignore_label_is_explained():
    MetadataCatalog.get("mappers_test_no_ignore").set(thing_classes=["a"])
    cfg = make_cfg(R50, ["INPUT.DATASET_MAPPER_NAME mask_former_semantic", "DATASETS.TRAIN ('mappers_test_no_ignore',)"])
    with pytest.raises(ValueError, match="has no ignore_label"):
        build_train_mapper(cfg)
