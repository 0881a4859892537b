"""Choosing the evaluators of a dataset from its metadata's ``evaluator_type`` and the model's enabled outputs."""
import logging
import os

from detectron2.data import MetadataCatalog
from detectron2.evaluation import COCOEvaluator, COCOPanopticEvaluator, SemSegEvaluator

from .cityscapes_evaluation import CityscapesInstanceEvaluator, CityscapesSemSegEvaluator
from .instance_evaluation import InstanceSegEvaluator
from .summary import SummarizingEvaluators

logger = logging.getLogger(__name__)

# Panoptic datasets whose thing classes are a subset of one contiguous id space with the stuff classes: their
# instance AP goes through InstanceSegEvaluator.
_SHARED_ID_PANOPTIC_TYPES = ("ade20k_panoptic_seg", "mapillary_vistas_panoptic_seg")
_PANOPTIC_TYPES = ("coco_panoptic_seg", "cityscapes_panoptic_seg") + _SHARED_ID_PANOPTIC_TYPES
# Dataset types whose dataset dicts carry "sem_seg_file_name" (COCO panoptic only in its '_with_sem_seg' names).
_SEM_SEG_TYPES = ("sem_seg",) + _SHARED_ID_PANOPTIC_TYPES
SUPPORTED_TYPES = ("sem_seg", "coco", "cityscapes_sem_seg", "cityscapes_instance") + _PANOPTIC_TYPES


def build_evaluator(cfg, dataset_name, output_folder=None):
    """
    The evaluators of ``dataset_name`` for the outputs MODEL.MASK_FORMER.TEST switches on, combined so that one
    inference pass yields every metric (the original's choice per ``evaluator_type``):

    - panoptic quality (``COCOPanopticEvaluator``) with PANOPTIC_ON on every panoptic type (``coco_panoptic_seg``,
      ``ade20k_panoptic_seg``, ``cityscapes_panoptic_seg``, ``mapillary_vistas_panoptic_seg``);
    - mask AP with INSTANCE_ON: ``COCOEvaluator`` on ``coco`` (also ADE20K instance) and ``coco_panoptic_seg``,
      ``InstanceSegEvaluator`` on ADE20K and Mapillary Vistas panoptic (both against the dataset's instance
      json), ``CityscapesInstanceEvaluator`` on ``cityscapes_instance`` and ``cityscapes_panoptic_seg``;
    - semantic metrics with SEMANTIC_ON: ``SemSegEvaluator`` (mIoU, fwIoU, mACC, pACC) on ``sem_seg``, ADE20K and
      Mapillary Vistas panoptic and COCO panoptic's ``..._with_sem_seg`` names; ``CityscapesSemSegEvaluator``
      (IoU, iIoU) on ``cityscapes_sem_seg`` and ``cityscapes_panoptic_seg``.

    The Cityscapes evaluators use ``cityscapesscripts`` and one machine. AP uses pycocotools' official COCOeval
    (detectron2's fast implementation needs its compiled ops). Results are logged as one table and written to
    ``<output_folder>/results.json``.
    """
    if output_folder is None:
        output_folder = os.path.join(cfg.OUTPUT_DIR, "inference")
    meta = MetadataCatalog.get(dataset_name)
    evaluator_type = meta.get("evaluator_type")
    if evaluator_type not in SUPPORTED_TYPES:
        raise NotImplementedError(
            f"dataset {dataset_name!r} has evaluator_type={evaluator_type!r}; build_evaluator supports "
            f"{SUPPORTED_TYPES}. Register the dataset with one of them or evaluate it with your own evaluator"
        )
    test = cfg.MODEL.MASK_FORMER.TEST
    evaluators = []
    if evaluator_type in _PANOPTIC_TYPES and test.PANOPTIC_ON:
        evaluators.append(COCOPanopticEvaluator(dataset_name, output_folder))
    if test.INSTANCE_ON:
        evaluators += _instance_evaluators(cfg, dataset_name, evaluator_type, output_folder)
    if test.SEMANTIC_ON:
        if evaluator_type in ("cityscapes_sem_seg", "cityscapes_panoptic_seg"):
            evaluators.append(CityscapesSemSegEvaluator(dataset_name))
        elif evaluator_type in _SEM_SEG_TYPES or meta.get("sem_seg_root") is not None:
            evaluators.append(SemSegEvaluator(dataset_name, distributed=True, output_dir=output_folder))
    if not evaluators:
        raise ValueError(
            f"nothing to evaluate on {dataset_name!r} (evaluator_type={evaluator_type!r}) with "
            f"MODEL.MASK_FORMER.TEST PANOPTIC_ON={test.PANOPTIC_ON}, INSTANCE_ON={test.INSTANCE_ON}, "
            f"SEMANTIC_ON={test.SEMANTIC_ON}; turn on an output the dataset has annotations for "
            "(semantic metrics of COCO panoptic need a '..._with_sem_seg' dataset)"
        )
    return SummarizingEvaluators(evaluators, output_file=os.path.join(output_folder, "results.json"))


def _instance_evaluators(cfg, dataset_name, evaluator_type, output_folder):
    """The mask AP evaluator of ``dataset_name``, as a list of zero or one."""
    if evaluator_type in ("cityscapes_instance", "cityscapes_panoptic_seg"):
        return [CityscapesInstanceEvaluator(dataset_name)]
    if evaluator_type in ("coco", "coco_panoptic_seg"):
        evaluator_class = COCOEvaluator
    elif evaluator_type in _SHARED_ID_PANOPTIC_TYPES:
        evaluator_class = InstanceSegEvaluator
    else:
        return []
    if not MetadataCatalog.get(dataset_name).get("json_file"):
        logger.warning(f"no instance AP on {dataset_name!r}: its metadata has no instance 'json_file'")
        return []
    return [
        evaluator_class(
            dataset_name,
            tasks=("segm",),
            distributed=True,
            output_dir=output_folder,
            max_dets_per_image=cfg.TEST.DETECTIONS_PER_IMAGE,
            use_fast_impl=False,
        )
    ]
