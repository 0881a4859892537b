"""Choosing detectron2's evaluators for a dataset from its metadata and the model's enabled outputs."""
import os

import numpy as np
from detectron2.data import MetadataCatalog
from detectron2.evaluation import COCOEvaluator, COCOPanopticEvaluator, SemSegEvaluator
from detectron2.utils.file_io import PathManager
from PIL import Image

from .summary import SummarizingEvaluators

_SUPPORTED_TYPES = ("coco_panoptic_seg", "coco", "sem_seg")


def load_sem_seg(filename, dtype=int):
    """
    A semantic PNG as an array. Replaces SemSegEvaluator's default reader, whose ``np.array(copy=False)``
    raises under NumPy 2.
    """
    with PathManager.open(filename, "rb") as f:
        return np.asarray(Image.open(f), dtype=dtype)


def build_evaluator(cfg, dataset_name, output_folder=None):
    """
    The evaluators of ``dataset_name`` (by its metadata's ``evaluator_type``), combined so that one inference
    pass over the dataset yields every metric the model's outputs allow:

    - ``coco_panoptic_seg``: panoptic quality (``COCOPanopticEvaluator``) when PANOPTIC_ON; mask AP on the
      thing classes against the dataset's instance json (``COCOEvaluator``) when INSTANCE_ON; mIoU / fwIoU /
      mACC / pACC (``SemSegEvaluator``) when SEMANTIC_ON and the dataset has semantic PNGs (the
      ``..._with_sem_seg`` registrations).
    - ``coco``: mask AP. ``sem_seg``: the semantic metrics.

    AP uses pycocotools' official COCOeval: detectron2's fast implementation needs its compiled ops.
    Results are logged as one table and written to ``<output_folder>/results.json``.
    """
    if output_folder is None:
        output_folder = os.path.join(cfg.OUTPUT_DIR, "inference")
    meta = MetadataCatalog.get(dataset_name)
    evaluator_type = meta.get("evaluator_type")
    if evaluator_type not in _SUPPORTED_TYPES:
        raise NotImplementedError(
            f"dataset {dataset_name!r} has evaluator_type={evaluator_type!r}; build_evaluator supports "
            f"{_SUPPORTED_TYPES}. Register the dataset with one of them or evaluate it with your own evaluator"
        )
    test = cfg.MODEL.MASK_FORMER.TEST
    evaluators = []
    if evaluator_type == "coco_panoptic_seg" and test.PANOPTIC_ON:
        evaluators.append(COCOPanopticEvaluator(dataset_name, output_folder))
    if evaluator_type in ("coco_panoptic_seg", "coco") and test.INSTANCE_ON and meta.get("json_file"):
        evaluators.append(
            COCOEvaluator(
                dataset_name,
                tasks=("segm",),
                distributed=True,
                output_dir=output_folder,
                max_dets_per_image=cfg.TEST.DETECTIONS_PER_IMAGE,
                use_fast_impl=False,
            )
        )
    has_sem_seg = evaluator_type == "sem_seg" or meta.get("sem_seg_root") is not None
    if test.SEMANTIC_ON and has_sem_seg:
        evaluators.append(
            SemSegEvaluator(
                dataset_name, distributed=True, output_dir=output_folder, sem_seg_loading_fn=load_sem_seg
            )
        )
    if not evaluators:
        raise ValueError(
            f"nothing to evaluate on {dataset_name!r} (evaluator_type={evaluator_type!r}) with "
            f"MODEL.MASK_FORMER.TEST PANOPTIC_ON={test.PANOPTIC_ON}, INSTANCE_ON={test.INSTANCE_ON}, "
            f"SEMANTIC_ON={test.SEMANTIC_ON}; turn on an output the dataset has annotations for "
            "(semantic metrics need a '..._with_sem_seg' dataset)"
        )
    return SummarizingEvaluators(evaluators, output_file=os.path.join(output_folder, "results.json"))
