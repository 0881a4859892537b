"""
A training script written against the original Mask2Former's public API runs unchanged on this package: configs
merged with ``get_cfg`` + ``add_deeplab_config`` + ``add_maskformer2_config``, detectron2's ``DefaultTrainer`` with
the mappers, evaluators and TTA wrapper that the original's ``train_net.py`` imports from ``mask2former``, and
detectron2's own checkpointer for ``--eval-only``. Each training mapper trains two iterations on the toy dataset,
and the checkpoint evaluated again gives the final evaluation's numbers.
"""
import os

import pytest
import torch
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.config import get_cfg
from detectron2.data import MetadataCatalog, build_detection_train_loader
from detectron2.engine import DefaultTrainer
from detectron2.evaluation import COCOPanopticEvaluator, DatasetEvaluators, SemSegEvaluator
from detectron2.evaluation.testing import flatten_results_dict
from detectron2.projects.deeplab import add_deeplab_config, build_lr_scheduler
from detectron2.utils.env import seed_all_rng

from conftest import CONFIGS
from mask2former import (
    COCOInstanceNewBaselineDatasetMapper,
    COCOPanopticNewBaselineDatasetMapper,
    InstanceSegEvaluator,
    MaskFormerInstanceDatasetMapper,
    MaskFormerPanopticDatasetMapper,
    MaskFormerSemanticDatasetMapper,
    SemanticSegmentorWithTTA,
    add_maskformer2_config,
)
from mask2former.toy import generate_toy_panoptic, register_toy_panoptic

TOY = "original_api_toy"
MAPPERS = {
    "mask_former_semantic": MaskFormerSemanticDatasetMapper,
    "mask_former_panoptic": MaskFormerPanopticDatasetMapper,
    "mask_former_instance": MaskFormerInstanceDatasetMapper,
    "coco_instance_lsj": COCOInstanceNewBaselineDatasetMapper,
    "coco_panoptic_lsj": COCOPanopticNewBaselineDatasetMapper,
}


class OriginalStyleTrainer(DefaultTrainer):
    """A DefaultTrainer extended through the original's public names only, as a user's script would be."""

    @classmethod
    def build_train_loader(cls, cfg):
        mapper = MAPPERS[cfg.INPUT.DATASET_MAPPER_NAME](cfg, True)
        return build_detection_train_loader(cfg, mapper=mapper)

    @classmethod
    def build_lr_scheduler(cls, cfg, optimizer):
        return build_lr_scheduler(cfg, optimizer)

    @classmethod
    def build_optimizer(cls, cfg, model):
        # The SOLVER keys that the original's optimizer reads, in a plain per-parameter AdamW.
        assert cfg.SOLVER.OPTIMIZER == "ADAMW" and cfg.SOLVER.CLIP_GRADIENTS.CLIP_TYPE == "full_model"
        groups = []
        for name, param in model.named_parameters():
            lr = cfg.SOLVER.BASE_LR * (cfg.SOLVER.BACKBONE_MULTIPLIER if name.startswith("backbone.") else 1.0)
            decay = cfg.SOLVER.WEIGHT_DECAY
            if "norm" in name:
                decay = cfg.SOLVER.WEIGHT_DECAY_NORM
            elif "query_embed" in name or "query_feat" in name:
                decay = cfg.SOLVER.WEIGHT_DECAY_EMBED
            groups.append({"params": [param], "lr": lr, "weight_decay": decay})
        return torch.optim.AdamW(groups, lr=cfg.SOLVER.BASE_LR)

    @classmethod
    def build_evaluator(cls, cfg, dataset_name, output_folder=None):
        output_folder = output_folder or os.path.join(cfg.OUTPUT_DIR, "inference")
        evaluator_type = MetadataCatalog.get(dataset_name).evaluator_type
        test = cfg.MODEL.MASK_FORMER.TEST
        evaluators = []
        if evaluator_type == "sem_seg" or (evaluator_type == "coco_panoptic_seg" and test.SEMANTIC_ON):
            evaluators.append(SemSegEvaluator(dataset_name, distributed=True, output_dir=output_folder))
        if evaluator_type == "coco_panoptic_seg" and test.PANOPTIC_ON:
            evaluators.append(COCOPanopticEvaluator(dataset_name, output_folder))
        if evaluator_type == "coco" or (evaluator_type == "coco_panoptic_seg" and test.INSTANCE_ON):
            evaluators.append(InstanceSegEvaluator(dataset_name, output_dir=output_folder))
        return DatasetEvaluators(evaluators)

    @classmethod
    def test_with_TTA(cls, cfg, model):
        folder = os.path.join(cfg.OUTPUT_DIR, "inference_TTA")
        evaluators = [cls.build_evaluator(cfg, name, output_folder=folder) for name in cfg.DATASETS.TEST]
        results = cls.test(cfg, SemanticSegmentorWithTTA(cfg, model), evaluators)
        return {k + "_TTA": v for k, v in results.items()}


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    root = tmp_path_factory.mktemp("toy") / "toy_panoptic"
    generate_toy_panoptic(str(root), num_train=4, num_val=2, seed=0)
    register_toy_panoptic(str(root), name=TOY)


# mapper -> (toy config, train set, test set, the headline metrics)
PANOPTIC = ("maskformer2_R50_narrow_toy.yaml", "panoptic_with_sem_seg", ("panoptic_seg/PQ", "segm/AP", "sem_seg/mIoU"))
SEMANTIC = ("maskformer2_R50_narrow_toy_semantic.yaml", "sem_seg", ("sem_seg/mIoU",))
INSTANCE = ("maskformer2_R50_narrow_toy_instance.yaml", "instance", ("segm/AP",))
CASES = {
    "coco_panoptic_lsj": PANOPTIC,
    "mask_former_panoptic": PANOPTIC,
    "mask_former_semantic": SEMANTIC,
    "coco_instance_lsj": INSTANCE,
    "mask_former_instance": INSTANCE,
}


def _setup(mapper, out):
    """The original's way of building the config: get_cfg, the two add_*_config, merge_from_file / _list."""
    config, dataset, _ = CASES[mapper]
    cfg = get_cfg()
    add_deeplab_config(cfg)
    add_maskformer2_config(cfg)
    cfg.merge_from_file(str(CONFIGS / "toy" / config))
    cfg.merge_from_list(
        [
            "DATASETS.TRAIN", f"('{TOY}_train_{dataset}',)", "DATASETS.TEST", f"('{TOY}_val_{dataset}',)",
            "INPUT.DATASET_MAPPER_NAME", mapper, "INPUT.IMAGE_SIZE", "64", "INPUT.MIN_SIZE_TRAIN", "(64,)",
            "INPUT.MAX_SIZE_TRAIN", "128", "INPUT.CROP.ENABLED", "True", "INPUT.CROP.TYPE", "absolute",
            "INPUT.CROP.SIZE", "(64, 64)", "INPUT.SIZE_DIVISIBILITY", "64", "INPUT.MIN_SIZE_TEST", "64",
            "INPUT.MAX_SIZE_TEST", "96", "SOLVER.IMS_PER_BATCH", "2", "SOLVER.MAX_ITER", "2",
            "TEST.EVAL_PERIOD", "0", "DATALOADER.NUM_WORKERS", "0", "MODEL.DEVICE", "cpu", "OUTPUT_DIR", str(out),
        ]
    )
    cfg.freeze()
    return cfg


@pytest.mark.parametrize("mapper", list(CASES))
def test_original_style_script_trains_then_evaluates_its_checkpoint(toy, mapper, tmp_path):
    cfg = _setup(mapper, tmp_path)
    seed_all_rng(0)
    trainer = OriginalStyleTrainer(cfg)
    trainer.resume_or_load(resume=False)
    trainer.train()
    # The final evaluation, as the EvalHook logged it.
    final = {k: value for k, (value, _) in trainer.storage.latest().items()}
    headline = CASES[mapper][2]
    assert set(headline) <= set(final), sorted(final)

    # --eval-only as the original's script does it: build_model, DetectionCheckpointer, test.
    model = OriginalStyleTrainer.build_model(cfg)
    DetectionCheckpointer(model, save_dir=cfg.OUTPUT_DIR).resume_or_load(str(tmp_path / "model_final.pth"))
    again = flatten_results_dict(OriginalStyleTrainer.test(cfg, model))
    assert {k: again[k] for k in headline} == pytest.approx({k: final[k] for k in headline}, nan_ok=True)

    if mapper == "mask_former_semantic":  # the original's TTA evaluates semantic models
        tta_cfg = cfg.clone()
        tta_cfg.defrost()
        tta_cfg.merge_from_list(["TEST.AUG.ENABLED", "True", "TEST.AUG.MIN_SIZES", "(64,)", "TEST.AUG.MAX_SIZE", "96"])
        tta = flatten_results_dict(OriginalStyleTrainer.test_with_TTA(tta_cfg, model))
        assert "sem_seg_TTA/mIoU" in tta
