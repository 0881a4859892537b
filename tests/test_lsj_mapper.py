"""The coco_panoptic_lsj mapper: output shapes, scale jitter, crop/pad, flips, and image/mask alignment."""
import numpy as np
import pytest
import torch
from panopticapi.utils import id2rgb
from PIL import Image

from conftest import R50, make_cfg
from mask2former.data import COCOPanopticLSJDatasetMapper, build_train_mapper

HEIGHT, WIDTH = 60, 90
# (segment id, contiguous class, iscrowd, colour, region (y0, y1, x0, x1)); together they tile the image.
SEGMENTS = [
    (1001, 0, 0, (200, 30, 30), (0, 30, 0, 40)),
    (1002, 0, 0, (30, 200, 30), (0, 30, 40, 90)),
    (2001, 7, 0, (30, 30, 200), (30, 60, 0, 60)),
    (3001, 2, 1, (220, 220, 40), (30, 60, 60, 90)),  # crowd
]


def _mapper(size=64, min_scale=0.5, max_scale=2.0, flip="horizontal", drop_empty=False):
    cfg = make_cfg(
        R50,
        [f"INPUT.IMAGE_SIZE {size}", f"INPUT.MIN_SCALE {min_scale}", f"INPUT.MAX_SCALE {max_scale}"]
        + [f"INPUT.RANDOM_FLIP {flip}", f"INPUT.LSJ_DROP_EMPTY_TARGETS {drop_empty}"],
    )
    return build_train_mapper(cfg)


@pytest.fixture(scope="module")
def dataset_dict(tmp_path_factory):
    """An image whose segments are flat, distinct colours, with its panoptic PNG (lossless, so colours are exact)."""
    root = tmp_path_factory.mktemp("lsj")
    image = np.zeros((HEIGHT, WIDTH, 3), dtype=np.uint8)
    ids = np.zeros((HEIGHT, WIDTH), dtype=np.uint32)
    for segment_id, _, _, color, (y0, y1, x0, x1) in SEGMENTS:
        image[y0:y1, x0:x1] = color
        ids[y0:y1, x0:x1] = segment_id
    Image.fromarray(image).save(root / "image.png")
    Image.fromarray(id2rgb(ids)).save(root / "pan.png")
    return {
        "file_name": str(root / "image.png"),
        "pan_seg_file_name": str(root / "pan.png"),
        "image_id": 1,
        "segments_info": [
            {"id": s, "category_id": c, "iscrowd": crowd, "isthing": c < 5} for s, c, crowd, _, _ in SEGMENTS
        ],
    }


def _check_alignment(out):
    """Every target mask lies on pixels of its segment's colour (away from resampled edges)."""
    image = out["image"].permute(1, 2, 0).numpy().astype(int)
    masks = out["instances"].gt_masks.numpy()
    checked = 0
    for mask, cls in zip(masks, out["instances"].gt_classes.tolist()):
        colors = {s[3] for s in SEGMENTS if s[1] == cls and not s[2]}
        m = np.pad(mask, 1, mode="edge")
        inner = mask & m[:-2, 1:-1] & m[2:, 1:-1] & m[1:-1, :-2] & m[1:-1, 2:]  # eroded: no blended edge pixel
        pixels = image[inner]
        if len(pixels) == 0:  # a sliver at the crop border
            continue
        checked += 1
        distance = np.min([np.abs(pixels - np.array(c)).sum(-1) for c in colors], axis=0)
        assert (distance <= 6).all(), f"class {cls}: {int((distance > 6).sum())} mask pixels have another colour"
    assert checked > 0 or len(masks) == 0


def test_output_shapes_and_targets(dataset_dict):
    mapper = _mapper()
    np.random.seed(0)
    for _ in range(10):
        out = mapper(dataset_dict)
        instances = out["instances"]
        assert out["image"].dtype == torch.uint8 and out["image"].shape == (3, 64, 64)
        assert instances.image_size == (64, 64)
        assert instances.gt_masks.dtype == torch.bool and instances.gt_masks.shape[1:] == (64, 64)
        assert instances.gt_classes.dtype == torch.int64
        assert len(instances.gt_boxes) == len(instances.gt_classes) == len(instances.gt_masks)
        assert instances.gt_classes.tolist() == [0, 0, 7], "every non-crowd segment, in order; the crowd one not"
        # Segments do not overlap.
        assert instances.gt_masks.sum(0).max() <= 1
        _check_alignment(out)
    assert dataset_dict["segments_info"][0]["id"] == 1001 and "image" not in dataset_dict, "input left untouched"


def test_downscale_pads_bottom_right_with_void(dataset_dict):
    """Scale 0.5 of 64: the 90x60 image fits a 32x32 box -> 32x21, then padded to 64x64 with 128 and no target."""
    np.random.seed(1)
    out = _mapper(min_scale=0.5, max_scale=0.5, flip="none")(dataset_dict)
    image, masks = out["image"], out["instances"].gt_masks
    assert torch.all(image[:, 21:, :] == 128) and torch.all(image[:, :, 32:] == 128)
    covered = masks.any(0)
    assert not covered[21:].any() and not covered[:, 32:].any()
    # Content area: the three non-crowd segments (5/6 of the image) are targets, the crowd corner is not.
    assert covered[:21, :32].float().mean().item() == pytest.approx(5 / 6, abs=0.03)
    assert not covered[12:21, 23:32].any()
    assert out["instances"].gt_classes.tolist() == [0, 0, 7]


def test_upscale_crops_without_padding(dataset_dict):
    """Scale 2 of 64: 90x60 -> 192x128, randomly cropped to 64x64: no padding anywhere."""
    mapper = _mapper(min_scale=2.0, max_scale=2.0, flip="none")
    np.random.seed(2)
    crops = set()
    for _ in range(8):
        out = mapper(dataset_dict)
        assert not torch.all(out["image"] == 128, dim=0).any(), "no padded pixel"
        _check_alignment(out)
        crops.add(out["image"].float().mean().item())
    assert len(crops) > 1, "the crop position must be random"


def test_scale_is_drawn_from_the_range(dataset_dict):
    """The content size (non-padded extent) varies between MIN_SCALE and MAX_SCALE of IMAGE_SIZE."""
    mapper = _mapper(size=100, min_scale=0.2, max_scale=0.9, flip="none")
    np.random.seed(3)
    widths = []
    for _ in range(20):
        image = mapper(dataset_dict)["image"]
        content = ~torch.all(image == 128, dim=0)
        widths.append(int(content.any(0).sum()))
    assert min(widths) >= 20 and max(widths) <= 90
    assert max(widths) - min(widths) > 30


def test_horizontal_flip_moves_image_and_masks_together(dataset_dict):
    """At scale 1 (90 wide in a 90 box) the only randomness is the flip: outputs are the reference or its mirror."""
    reference = _mapper(size=90, min_scale=1.0, max_scale=1.0, flip="none")(dataset_dict)
    mapper = _mapper(size=90, min_scale=1.0, max_scale=1.0, flip="horizontal")
    np.random.seed(4)
    flipped = kept = 0
    for _ in range(12):
        out = mapper(dataset_dict)
        assert out["instances"].gt_classes.tolist() == reference["instances"].gt_classes.tolist()
        if torch.equal(out["image"], reference["image"]):
            kept += 1
            assert torch.equal(out["instances"].gt_masks, reference["instances"].gt_masks)
        else:
            flipped += 1
            assert torch.equal(out["image"][:, :60], reference["image"][:, :60].flip(-1))
            assert torch.equal(out["instances"].gt_masks[:, :60], reference["instances"].gt_masks[:, :60].flip(-1))
            # The first segment (left half of the top row) is now on the right.
            first = out["instances"].gt_masks[0]
            assert first[:30, 50:].all() and not first[:, :50].any()
    assert flipped and kept


def test_segments_out_of_the_crop_and_images_without_segments_are_kept(dataset_dict):
    """As in the original: a segment the crop misses is an empty target; a crowd-only image has no targets."""
    mapper = _mapper()
    crowd_only = dict(dataset_dict, segments_info=[s for s in dataset_dict["segments_info"] if s["iscrowd"]])
    for info in (crowd_only["segments_info"], []):
        out = mapper(dict(dataset_dict, segments_info=info))
        assert out["image"].shape == (3, 64, 64)
        assert out["instances"].gt_masks.shape == (0, 64, 64) and len(out["instances"].gt_classes) == 0
        assert out["instances"].gt_boxes.tensor.shape == (0, 4)
    # A segment id absent from the PNG stands for a segment that the crop left out.
    absent = dict(dataset_dict, segments_info=[{"id": 12345, "category_id": 3, "iscrowd": 0, "isthing": True}])
    out = mapper(absent)
    assert out["instances"].gt_classes.tolist() == [3]
    assert out["instances"].gt_masks.shape == (1, 64, 64) and not out["instances"].gt_masks.any()
    assert out["instances"].gt_boxes.tensor.tolist() == [[0.0, 0.0, 0.0, 0.0]]


def test_drop_empty_targets_option(dataset_dict):
    """INPUT.LSJ_DROP_EMPTY_TARGETS: segments out of view are no targets, crowd-only images are skipped."""
    mapper = _mapper(drop_empty=True)
    crowd_only = dict(dataset_dict, segments_info=[s for s in dataset_dict["segments_info"] if s["iscrowd"]])
    assert mapper(crowd_only) is None
    assert mapper(dict(dataset_dict, segments_info=[])) is None
    absent = dict(dataset_dict, segments_info=[{"id": 12345, "category_id": 3, "iscrowd": 0, "isthing": True}])
    out = mapper(absent)
    assert out["instances"].gt_masks.shape == (0, 64, 64) and len(out["instances"].gt_classes) == 0
    # Upscaled 4x, crops often miss a segment: with the same draws, the option keeps just the visible targets.
    keep_all, drop = _mapper(min_scale=4.0, max_scale=4.0), _mapper(min_scale=4.0, max_scale=4.0, drop_empty=True)
    dropped = 0
    for seed in range(8):
        np.random.seed(seed)
        full = keep_all(dataset_dict)["instances"]
        np.random.seed(seed)
        kept = drop(dataset_dict)["instances"]
        visible = full.gt_masks.flatten(1).any(1)
        dropped += int((~visible).sum())
        assert kept.gt_classes.tolist() == full.gt_classes[visible].tolist()
        assert torch.equal(kept.gt_masks, full.gt_masks[visible])
        assert torch.equal(kept.gt_boxes.tensor, full.gt_boxes.tensor[visible])
    assert dropped > 0


def test_configuration_errors_are_explained():
    with pytest.raises(ValueError, match="INPUT.DATASET_MAPPER_NAME='detr_panoptic' is not a training mapper"):
        build_train_mapper(make_cfg(R50, ["INPUT.DATASET_MAPPER_NAME detr_panoptic"]))
    with pytest.raises(ValueError, match="training only"):
        COCOPanopticLSJDatasetMapper(make_cfg(R50), is_train=False)
    with pytest.raises(ValueError, match="MIN_SCALE <= MAX_SCALE"):
        _mapper(min_scale=2.0, max_scale=1.0)
