"""
One-pass evaluation (PQ + AP + mIoU) on datasets in the toy panoptic layout, registered as COCO panoptic (things
first in the contiguous ids) and as ADE20K / Mapillary Vistas panoptic (things interleaved with the stuff in one id
space, mask AP through InstanceSegEvaluator): ground truth fed back as prediction scores 100 everywhere; a
hand-built case with known partial overlaps gives the PQ, AP and mIoU worked out by hand below.
"""
import json
import uuid
from functools import partial
from pathlib import Path

import numpy as np
import pytest
import torch
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.structures import BitMasks, Instances
from panopticapi.utils import rgb2id
from PIL import Image

from conftest import CONFIGS, make_cfg
from mask2former.data.datasets.register_coco_panoptic_annos_semseg import load_panoptic_json
from mask2former.data.datasets.register_toy_panoptic import CATEGORIES, THINGS, split_paths
from mask2former.evaluation import InstanceSegEvaluator, build_evaluator
from mask2former.toy import generate_toy_panoptic, register_toy_panoptic, write_split

CONFIG = CONFIGS / "coco/panoptic-segmentation/maskformer2_R50_bs16_50ep.yaml"
NUM_CLASSES = 6  # toy: disc, triangle, cross (things 0-2); stripes, checker, speckle (stuff 3-5)
DISC, TRIANGLE, CROSS, STRIPES, CHECKER = 1, 2, 4, 11, 12  # dataset ids


# Dataset ids in the contiguous order of the ADE20K-style registration: stripes, disc, checker, triangle, speckle,
# cross (things at contiguous ids 1, 3, 5).
SHARED_ORDER = [11, 1, 12, 2, 13, 4]


def _register(root, evaluator_type="coco_panoptic_seg"):
    """The val split under ``root`` as a dataset of ``evaluator_type``, with semantic PNGs."""
    name = f"evaltest_{uuid.uuid4().hex[:8]}"
    if evaluator_type == "coco_panoptic_seg":
        register_toy_panoptic(root=str(root), name=name)
        return name + "_val_panoptic_with_sem_seg"
    contiguous = {dataset_id: i for i, dataset_id in enumerate(SHARED_ORDER)}
    names = {c["id"]: c["name"] for c in CATEGORIES}
    thing_ids = [dataset_id for dataset_id in SHARED_ORDER if dataset_id in {c["id"] for c in THINGS}]
    meta = {
        "thing_classes": [names[d] for d in thing_ids],
        "stuff_classes": [names[d] for d in SHARED_ORDER],
        "thing_dataset_id_to_contiguous_id": {d: contiguous[d] for d in thing_ids},
        "stuff_dataset_id_to_contiguous_id": contiguous,
    }
    paths = split_paths(str(root), "val")
    # The toy's semantic PNGs hold its own contiguous ids (CATEGORIES order): rewrite them in this order.
    toy_to_shared = np.full(256, 255, dtype=np.uint8)
    for toy_id, category in enumerate(CATEGORIES):
        toy_to_shared[toy_id] = contiguous[category["id"]]
    sem_seg_root = Path(root) / "semseg_shared_ids"
    sem_seg_root.mkdir()
    for png in Path(paths["sem_seg_root"]).glob("*.png"):
        Image.fromarray(toy_to_shared[np.asarray(Image.open(png))]).save(sem_seg_root / png.name)
    load = partial(
        load_panoptic_json,
        paths["panoptic_json"],
        paths["image_root"],
        paths["panoptic_root"],
        meta,
        sem_seg_root=str(sem_seg_root),
    )
    DatasetCatalog.register(name, load)
    MetadataCatalog.get(name).set(
        image_root=paths["image_root"],
        panoptic_root=paths["panoptic_root"],
        panoptic_json=paths["panoptic_json"],
        json_file=paths["instances_json"],
        evaluator_type=evaluator_type,
        ignore_label=255,
        label_divisor=1000,
        **meta,
    )
    return name


def _outputs(segments, height, width, meta):
    """
    Model outputs from a list of predicted ``(dataset category_id, bool mask)``: the panoptic id map with its
    segments_info, one-hot semantic scores, and one instance of score 1 per thing segment.
    """
    thing_map = meta.thing_dataset_id_to_contiguous_id
    contiguous = meta.stuff_dataset_id_to_contiguous_id
    id_map = torch.zeros((height, width), dtype=torch.int32)
    sem_seg = torch.zeros((NUM_CLASSES, height, width))
    segments_info, thing_masks, thing_classes = [], [], []
    for k, (category_id, mask) in enumerate(segments):
        mask = torch.as_tensor(mask)
        id_map[mask] = k + 1
        sem_seg[contiguous[category_id]][mask] = 1.0
        isthing = category_id in thing_map
        segments_info.append({"id": k + 1, "isthing": isthing, "category_id": contiguous[category_id]})
        if isthing:
            thing_masks.append(mask)
            thing_classes.append(thing_map[category_id])
    instances = Instances((height, width))
    masks = torch.stack(thing_masks) if thing_masks else torch.zeros((0, height, width), dtype=torch.bool)
    instances.pred_masks = masks
    instances.pred_boxes = BitMasks(masks).get_bounding_boxes()
    instances.scores = torch.ones(len(thing_masks))
    instances.pred_classes = torch.tensor(thing_classes, dtype=torch.int64)
    return {"sem_seg": sem_seg, "panoptic_seg": (id_map, segments_info), "instances": instances}


def _ground_truth_segments(dataset_dict, meta):
    """The annotated segments of one dataset dict, read back from its panoptic PNG."""
    ids = rgb2id(np.asarray(Image.open(dataset_dict["pan_seg_file_name"]).convert("RGB")))
    to_dataset = {v: k for k, v in meta.stuff_dataset_id_to_contiguous_id.items()}
    return [(to_dataset[s["category_id"]], ids == s["id"]) for s in dataset_dict["segments_info"]]


def _evaluate(dataset_name, predictions, output_dir):
    cfg = make_cfg(CONFIG)
    evaluator = build_evaluator(cfg, dataset_name, str(output_dir))
    meta = MetadataCatalog.get(dataset_name)
    evaluator.reset()
    for d in DatasetCatalog.get(dataset_name):
        height, width = np.asarray(Image.open(d["file_name"])).shape[:2]
        segments = predictions(d, meta)
        evaluator.process([d], [_outputs(segments, height, width, meta)])
    return evaluator.evaluate()


SHARED_ID_TYPES = ["ade20k_panoptic_seg", "mapillary_vistas_panoptic_seg"]


@pytest.mark.parametrize("evaluator_type", ["coco_panoptic_seg", "ade20k_panoptic_seg"])
def test_ground_truth_as_prediction_scores_100(tmp_path, evaluator_type):
    generate_toy_panoptic(tmp_path / "toy", num_train=1, num_val=6, seed=3)
    name = _register(tmp_path / "toy", evaluator_type)
    results = _evaluate(name, _ground_truth_segments, tmp_path / "eval")

    for key in ("PQ", "SQ", "RQ", "PQ_th", "SQ_th", "RQ_th", "PQ_st", "SQ_st", "RQ_st"):
        assert results["panoptic_seg"][key] == pytest.approx(100.0), key
    assert results["segm"]["AP"] == pytest.approx(100.0)
    for key in ("mIoU", "fwIoU", "mACC", "pACC"):
        assert results["sem_seg"][key] == pytest.approx(100.0), key

    saved = json.loads((tmp_path / "eval" / "results.json").read_text())
    assert saved["summary"]["PQ"] == pytest.approx(100.0)
    assert saved["summary"]["AP"] == pytest.approx(100.0)
    assert saved["summary"]["mIoU"] == pytest.approx(100.0)


def _box(y0, y1, x0, x1, size=20):
    mask = np.zeros((size, size), dtype=bool)
    mask[y0:y1, x0:x1] = True
    return mask


# Image 1: a 10x10 disc on checker. Image 2: two 6x6 triangles on stripes.
GT_DISC = _box(5, 15, 5, 15)
GT_TRI_A, GT_TRI_B = _box(2, 8, 2, 8), _box(12, 18, 12, 18)
# Predictions: the disc shifted 2 px right; triangle A exact, triangle B missed, a false cross on the stripes.
PRED_DISC = _box(5, 15, 7, 17)
PRED_CROSS = _box(12, 18, 0, 6)

HAND_GT = [
    [(DISC, GT_DISC), (CHECKER, ~GT_DISC)],
    [(TRIANGLE, GT_TRI_A), (TRIANGLE, GT_TRI_B), (STRIPES, ~(GT_TRI_A | GT_TRI_B))],
]
HAND_PRED = [
    [(DISC, PRED_DISC), (CHECKER, ~PRED_DISC)],
    [(TRIANGLE, GT_TRI_A), (CROSS, PRED_CROSS), (STRIPES, ~(GT_TRI_A | PRED_CROSS))],
]


@pytest.mark.parametrize("evaluator_type", ["coco_panoptic_seg"] + SHARED_ID_TYPES)
def test_hand_built_partial_overlaps(tmp_path, evaluator_type):
    root = tmp_path / "hand"
    write_split(str(root), "val", [(np.zeros((20, 20, 3), dtype=np.uint8), segments) for segments in HAND_GT])
    name = _register(root, evaluator_type)
    results = _evaluate(name, lambda d, meta: HAND_PRED[d["image_id"] - 1], tmp_path / "eval")

    # Worked out by hand. IoUs of the matched segments:
    iou_disc = 80 / 120  # 10x10 boxes 2 px apart: 10x8 overlap, 100 + 100 - 80 union
    iou_checker = 280 / 320  # 300 px each; they share all but the 120 px covered by either disc
    iou_stripes = 292 / 364  # 328 px each; 108 px are triangle A, triangle B or the cross
    # Per class, PQ = sum of matched IoUs / (TP + FP / 2 + FN / 2), over the classes that occur:
    pq_disc = iou_disc / 1  # 1 TP
    pq_triangle = 1.0 / (1 + 0.5)  # A matched exactly, B missed (1 FN)
    pq_cross = 0.0  # 1 FP, no TP
    pq_things = [pq_disc, pq_triangle, pq_cross]
    pq_stuff = [iou_checker, iou_stripes]
    panoptic = results["panoptic_seg"]
    assert panoptic["PQ"] == pytest.approx(100 * np.mean(pq_things + pq_stuff))
    assert panoptic["PQ_th"] == pytest.approx(100 * np.mean(pq_things))
    assert panoptic["PQ_st"] == pytest.approx(100 * np.mean(pq_stuff))
    assert panoptic["SQ_th"] == pytest.approx(100 * np.mean([iou_disc, 1.0, 0.0]))
    assert panoptic["RQ_th"] == pytest.approx(100 * np.mean([1.0, 1 / 1.5, 0.0]))

    # Mask AP over the classes with ground truth (disc, triangle). The disc (IoU 2/3) is a TP at IoU thresholds
    # 0.50-0.65 (4 of 10) with precision 1; the triangle reaches recall 1/2 at precision 1 at every threshold:
    # 51 of COCO's 101 recall points.
    ap_disc = 100 * 4 / 10
    ap_triangle = 100 * 51 / 101
    assert results["segm"]["AP"] == pytest.approx(np.mean([ap_disc, ap_triangle]))
    assert results["segm"]["AP50"] == pytest.approx(np.mean([100, ap_triangle]))

    # Semantic IoU per class with ground truth: disc 80/120, triangle 36/72 (B is labelled stripes), stripes
    # 292/364, checker 280/320; the cross has no ground truth and is left out of the mean.
    assert results["sem_seg"]["mIoU"] == pytest.approx(100 * np.mean([80 / 120, 36 / 72, iou_stripes, iou_checker]))
    assert results["sem_seg"]["pACC"] == pytest.approx(100 * (80 + 36 + 292 + 280) / 800)


@pytest.mark.parametrize("evaluator_type", SHARED_ID_TYPES)
def test_shared_id_panoptic_types_take_instance_ap_from_instance_seg_evaluator(tmp_path, evaluator_type):
    write_split(str(tmp_path), "val", [(np.zeros((20, 20, 3), dtype=np.uint8), HAND_GT[0])])
    name = _register(tmp_path, evaluator_type)
    evaluators = build_evaluator(make_cfg(CONFIG), name, str(tmp_path / "eval"))._evaluators
    names = [type(e).__name__ for e in evaluators]
    assert names == ["COCOPanopticEvaluator", "InstanceSegEvaluator", "SemSegEvaluator"]
    # Instances of a stuff class (contiguous 0 = stripes here) cannot be scored as instances: a clear error.
    evaluator = InstanceSegEvaluator(name, output_dir=str(tmp_path / "ins"))  # as the original's train_net builds it
    instances = Instances((20, 20), pred_masks=torch.ones((1, 20, 20), dtype=torch.bool), scores=torch.ones(1))
    instances.pred_boxes = BitMasks(instances.pred_masks).get_bounding_boxes()
    instances.pred_classes = torch.tensor([0])
    with pytest.raises(ValueError, match="not thing classes"):
        evaluator.process([{"image_id": 1}], [{"instances": instances}])
    # The disc (contiguous id 1 here) predicted exactly.
    evaluator.reset()
    instances.pred_masks = torch.from_numpy(GT_DISC)[None]
    instances.pred_boxes = BitMasks(instances.pred_masks).get_bounding_boxes()
    instances.pred_classes = torch.tensor([1])
    evaluator.process([{"image_id": 1}], [{"instances": instances}])
    assert evaluator.evaluate()["segm"]["AP"] == pytest.approx(100.0)


def test_unknown_evaluator_type_is_refused():
    name = f"evaltest_{uuid.uuid4().hex[:8]}"
    MetadataCatalog.get(name).set(evaluator_type="lvis")
    with pytest.raises(NotImplementedError, match="evaluator_type"):
        build_evaluator(make_cfg(CONFIG), name)


def test_semantic_metrics_need_the_with_sem_seg_dataset(tmp_path):
    generate_toy_panoptic(tmp_path / "toy", num_train=1, num_val=1)
    base = _register(tmp_path / "toy").replace("_with_sem_seg", "")
    cfg = make_cfg(
        CONFIG, ["MODEL.MASK_FORMER.TEST.PANOPTIC_ON False", "MODEL.MASK_FORMER.TEST.INSTANCE_ON False"]
    )
    with pytest.raises(ValueError, match="_with_sem_seg"):
        build_evaluator(cfg, base)
