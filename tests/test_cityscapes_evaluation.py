"""
Cityscapes semantic (IoU) and instance (AP) evaluation through cityscapesscripts, on a tiny dataset in Cityscapes'
own layout written here: the ground truth fed back scores 100; a hand-built case gives the IoU and AP worked out
by hand from Cityscapes' definitions.
"""
import uuid

import numpy as np
import pytest
import torch
from detectron2.data import MetadataCatalog
from detectron2.data.datasets.builtin_meta import _get_builtin_metadata
from detectron2.evaluation import COCOPanopticEvaluator
from detectron2.structures import BitMasks, Instances
from PIL import Image

from conftest import R50, make_cfg
from mask2former.evaluation import build_evaluator
from mask2former.evaluation.cityscapes_evaluation import CityscapesInstanceEvaluator, CityscapesSemSegEvaluator

pytest.importorskip("cityscapesscripts", reason="cityscapesscripts is in requirements/base.txt; install it")

SIZE = 40
# Cityscapes label ids and train ids (cityscapesscripts.helpers.labels) of the classes used here.
ROAD, SKY, PERSON, CAR, BUS = 7, 23, 24, 26, 28
TRAIN_ID = {ROAD: 0, SKY: 10, PERSON: 11, CAR: 13, BUS: 15}
THING_INDEX = {PERSON: 0, CAR: 2}  # index in the Cityscapes instance metadata's thing_classes
BASENAME = "frankfurt_000000_000001"


def _box(y0, y1, x0, x1):
    mask = np.zeros((SIZE, SIZE), dtype=bool)
    mask[y0:y1, x0:x1] = True
    return mask


# Sky above road; two 12x12 cars on the road, a 12x12 person against the sky.
CAR_A, CAR_B, PERSON_BOX = _box(22, 34, 2, 14), _box(22, 34, 24, 36), _box(4, 16, 14, 26)
SKY_AREA = _box(0, 20, 0, SIZE) & ~PERSON_BOX
ROAD_AREA = _box(20, SIZE, 0, SIZE) & ~CAR_A & ~CAR_B
GT_INSTANCES = [(CAR, CAR_A), (CAR, CAR_B), (PERSON, PERSON_BOX)]


def _label_map(regions):
    labels = np.zeros((SIZE, SIZE), dtype=np.uint8)
    for label, mask in regions:
        labels[mask] = label
    return labels


GT_LABELS = _label_map([(SKY, SKY_AREA), (ROAD, ROAD_AREA)] + GT_INSTANCES)


def _register(tmp_path, evaluator_type):
    """One image in Cityscapes' layout (gtFine/<split>/<city>/..._gtFine_{labelIds,instanceIds}.png)."""
    gt_dir = tmp_path / "gtFine" / "val"
    (gt_dir / "frankfurt").mkdir(parents=True)
    Image.fromarray(GT_LABELS).save(gt_dir / "frankfurt" / f"{BASENAME}_gtFine_labelIds.png")
    instance_ids = GT_LABELS.astype(np.uint16)
    for k, (label, mask) in enumerate(GT_INSTANCES):
        instance_ids[mask] = label * 1000 + k  # Cityscapes: label id * 1000 + instance number
    Image.fromarray(instance_ids).save(gt_dir / "frankfurt" / f"{BASENAME}_gtFine_instanceIds.png")
    name = f"cityscapes_evaltest_{uuid.uuid4().hex[:8]}"
    MetadataCatalog.get(name).set(
        gt_dir=str(gt_dir), evaluator_type=evaluator_type, ignore_label=255, **_get_builtin_metadata("cityscapes")
    )
    return name


def _evaluate(name, sem_labels, instances, output_dir):
    """Evaluate one prediction: a label-id map (one-hot train-id scores) and ``(label id, mask, score)``s."""
    evaluator = build_evaluator(make_cfg(R50), name, str(output_dir))
    sem_seg = torch.zeros((19, SIZE, SIZE))
    for label, train_id in TRAIN_ID.items():
        sem_seg[train_id][torch.from_numpy(sem_labels == label)] = 1.0
    pred = Instances((SIZE, SIZE))
    pred.pred_masks = torch.from_numpy(np.stack([mask for _, mask, _ in instances]))
    pred.pred_boxes = BitMasks(pred.pred_masks).get_bounding_boxes()
    pred.pred_classes = torch.tensor([THING_INDEX[label] for label, _, _ in instances])
    pred.scores = torch.tensor([score for _, _, score in instances])
    evaluator.reset()
    inputs = [{"file_name": f"/images/frankfurt/{BASENAME}_leftImg8bit.png", "image_id": BASENAME}]
    evaluator.process(inputs, [{"sem_seg": sem_seg, "instances": pred}])
    return evaluator.evaluate()


def test_ground_truth_scores_100(tmp_path):
    perfect = [(label, mask, 1.0) for label, mask in GT_INSTANCES]
    semantic = _evaluate(_register(tmp_path / "sem", "cityscapes_sem_seg"), GT_LABELS, perfect, tmp_path / "e1")
    assert list(semantic) == ["sem_seg"]
    assert semantic["sem_seg"]["IoU"] == pytest.approx(100.0)
    assert semantic["sem_seg"]["iIoU"] == pytest.approx(100.0)
    instance = _evaluate(_register(tmp_path / "ins", "cityscapes_instance"), GT_LABELS, perfect, tmp_path / "e2")
    assert list(instance) == ["segm"]
    assert instance["segm"]["AP"] == pytest.approx(100.0)
    assert instance["segm"]["AP50"] == pytest.approx(100.0)


def test_hand_built_partial_case(tmp_path):
    # Semantic: car B labelled road, and a false 4x8 bus in the sky.
    false_bus = _box(0, 4, 30, 38)
    pred_labels = _label_map([(SKY, SKY_AREA), (ROAD, ROAD_AREA | CAR_B), (CAR, CAR_A), (PERSON, PERSON_BOX)])
    pred_labels[false_bus] = BUS
    # Instances: car A exact, car B missed, the person shifted 2 px right.
    shifted_person = _box(4, 16, 16, 28)
    instances = [(CAR, CAR_A, 0.9), (PERSON, shifted_person, 0.8)]

    semantic = _evaluate(_register(tmp_path / "sem", "cityscapes_sem_seg"), pred_labels, instances, tmp_path / "e1")
    # Cityscapes' class IoU = TP / (TP + FP + FN), averaged over the classes where that is defined: a class predicted
    # but absent from the ground truth (the bus) counts with IoU 0.
    road = 512 / (512 + 144)  # 800 px of road side minus two cars; car B's 144 px predicted as road
    sky = 624 / 656  # 656 px of sky; 32 of them predicted as bus
    car, person, bus = 144 / 288, 1.0, 0.0
    assert semantic["sem_seg"]["IoU"] == pytest.approx(100 * np.mean([road, sky, car, person, bus]))

    instance = _evaluate(_register(tmp_path / "ins", "cityscapes_instance"), pred_labels, instances, tmp_path / "e2")
    # Cityscapes AP per class is the area under the precision-recall curve at overlap thresholds 0.50:0.95 (an
    # overlap must exceed the threshold), averaged over the classes with ground truth. Car: precision 1 up to
    # recall 1/2 at every threshold. Person: IoU 12x10 / (144 + 144 - 120) = 0.714, a match at 0.50-0.70 (5 of 10).
    ap_car = 0.5
    ap_person = 5 / 10
    assert instance["segm"]["AP"] == pytest.approx(100 * np.mean([ap_car, ap_person]))
    assert instance["segm"]["AP50"] == pytest.approx(100 * np.mean([0.5, 1.0]))


def test_panoptic_type_combines_pq_with_the_cityscapes_evaluators(tmp_path):
    name = _register(tmp_path, "cityscapes_panoptic_seg")
    MetadataCatalog.get(name).set(
        panoptic_json=str(tmp_path / "unused.json"),
        panoptic_root=str(tmp_path),
        thing_dataset_id_to_contiguous_id={PERSON: TRAIN_ID[PERSON], CAR: TRAIN_ID[CAR]},
        stuff_dataset_id_to_contiguous_id={ROAD: TRAIN_ID[ROAD], SKY: TRAIN_ID[SKY]},
    )
    evaluators = build_evaluator(make_cfg(R50), name, str(tmp_path / "eval"))._evaluators
    expected = [COCOPanopticEvaluator, CityscapesInstanceEvaluator, CityscapesSemSegEvaluator]
    assert [type(e) for e in evaluators] == expected
    semantic_only = make_cfg(
        R50, ["MODEL.MASK_FORMER.TEST.PANOPTIC_ON False", "MODEL.MASK_FORMER.TEST.INSTANCE_ON False"]
    )
    evaluators = build_evaluator(semantic_only, name, str(tmp_path / "eval"))._evaluators
    assert [type(e) for e in evaluators] == [CityscapesSemSegEvaluator]
