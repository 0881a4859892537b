"""
Mask2Former's trainer: detectron2's DefaultTrainer with the original's data, optimizer and evaluation, plus
CPU-safe distributed training, safe checkpoints, the non-finite-loss guard and preemption checkpoints.
"""
import itertools
import logging
import os
import weakref
from collections import OrderedDict

import torch
from detectron2.data import build_detection_train_loader
from detectron2.engine import AMPTrainer, DefaultTrainer, SimpleTrainer, create_ddp_model
from detectron2.projects.deeplab import build_lr_scheduler
from detectron2.solver.build import maybe_add_gradient_clipping, reduce_param_groups
from detectron2.utils import comm
from detectron2.utils.logger import setup_logger
from torch import nn

from ..checkpoint import SafeCheckpointer
from ..data import build_train_mapper
from ..data.dataset_mappers import SkippedFileCounter
from ..evaluation import build_evaluator
from ..test_time_augmentation import SemanticSegmentorWithTTA
from .hooks import NonFiniteLossCheck, PreemptionCheckpoint, TrainingPreempted

__all__ = ["Trainer", "optimizer_param_groups", "with_full_model_gradient_clipping"]

logger = logging.getLogger("mask2former")

_NORM_TYPES = (
    nn.BatchNorm1d,
    nn.BatchNorm2d,
    nn.BatchNorm3d,
    nn.SyncBatchNorm,
    nn.GroupNorm,
    nn.InstanceNorm1d,
    nn.InstanceNorm2d,
    nn.InstanceNorm3d,
    nn.LayerNorm,
    nn.LocalResponseNorm,
)
# Parameters of these names are positions, not weights: no weight decay (as for Swin's own training).
_NO_DECAY_NAMES = ("relative_position_bias_table", "absolute_pos_embed")


def optimizer_param_groups(cfg, model):
    """
    One hyper-parameter set per trainable parameter: learning rate SOLVER.BASE_LR (times BACKBONE_MULTIPLIER in
    the backbone), weight decay SOLVER.WEIGHT_DECAY, except WEIGHT_DECAY_NORM in normalization layers,
    WEIGHT_DECAY_EMBED in embeddings (the queries) and none on position tables; identical sets are merged.
    """
    solver = cfg.SOLVER
    groups, seen = [], set()
    for module_name, module in model.named_modules():
        for name, param in module.named_parameters(recurse=False):
            if not param.requires_grad or param in seen:
                continue
            seen.add(param)
            lr, weight_decay = solver.BASE_LR, solver.WEIGHT_DECAY
            if module_name == "backbone" or module_name.startswith("backbone."):
                lr *= solver.BACKBONE_MULTIPLIER
            if name in _NO_DECAY_NAMES:
                weight_decay = 0.0
            if isinstance(module, _NORM_TYPES):
                weight_decay = solver.WEIGHT_DECAY_NORM
            if isinstance(module, nn.Embedding):
                weight_decay = solver.WEIGHT_DECAY_EMBED
            groups.append({"params": [param], "lr": lr, "weight_decay": weight_decay})
    return reduce_param_groups(groups)


def with_full_model_gradient_clipping(optimizer_class, max_norm, norm_type):
    """``optimizer_class`` whose ``step`` first clips the gradient norm of all its parameters taken together."""

    class FullModelGradientClipping(optimizer_class):
        def step(self, closure=None):
            params = itertools.chain.from_iterable(group["params"] for group in self.param_groups)
            torch.nn.utils.clip_grad_norm_(params, max_norm, norm_type)
            return super().step(closure=closure)

    FullModelGradientClipping.__name__ = f"{optimizer_class.__name__}WithFullModelGradientClipping"
    return FullModelGradientClipping


class Trainer(DefaultTrainer):
    """
    detectron2's DefaultTrainer with Mask2Former's data, optimizer and evaluation. The constructor differs from
    DefaultTrainer's in three ways: checkpoints are made by ``build_checkpointer``, CPU models are wrapped in
    DistributedDataParallel without device ids (so multi-process CPU training over gloo works), and
    SOLVER.AMP.ENABLED on a CPU trains in float32 with a warning (detectron2's AMPTrainer is CUDA-only).
    """

    def __init__(self, cfg):
        super(DefaultTrainer, self).__init__()
        if not logging.getLogger("detectron2").isEnabledFor(logging.INFO):
            setup_logger()
        cfg = self.auto_scale_workers(cfg, comm.get_world_size())

        model = self.build_model(cfg)
        optimizer = self.build_optimizer(cfg, model)
        data_loader = self.build_train_loader(cfg)

        on_cuda = torch.device(cfg.MODEL.DEVICE).type == "cuda"
        model = create_ddp_model(
            model, broadcast_buffers=False, device_ids=[torch.cuda.current_device()] if on_cuda else None
        )
        use_amp = cfg.SOLVER.AMP.ENABLED
        if use_amp and not on_cuda:
            logger.warning(
                f"SOLVER.AMP.ENABLED is ignored on MODEL.DEVICE={cfg.MODEL.DEVICE!r}: mixed precision training "
                "needs CUDA; training in float32"
            )
            use_amp = False
        self._trainer = (AMPTrainer if use_amp else SimpleTrainer)(model, data_loader, optimizer)

        self.scheduler = self.build_lr_scheduler(cfg, optimizer)
        self.checkpointer = self.build_checkpointer(cfg, model, trainer=weakref.proxy(self))
        self.start_iter = 0
        self.max_iter = cfg.SOLVER.MAX_ITER
        self.cfg = cfg
        self.register_hooks(self.build_hooks())

    @classmethod
    def build_checkpointer(cls, cfg, model, **checkpointables):
        """The checkpointer of every load and save of this script, saving to OUTPUT_DIR."""
        return SafeCheckpointer(model, cfg.OUTPUT_DIR, verify_md5=cfg.MODEL.WEIGHTS_MD5_CHECK, **checkpointables)

    def build_hooks(self):
        """
        DefaultTrainer's hooks, plus the check that stops training at the first non-finite loss and the
        checkpoint-and-stop on SIGTERM/SIGUSR1 before a preemption.
        """
        return super().build_hooks() + [NonFiniteLossCheck(), PreemptionCheckpoint()]

    def train(self):
        """
        Train from ``start_iter`` to MAX_ITER; returns the last evaluation's results, or None when a preemption
        signal stopped training early (after saving a checkpoint to resume from).
        """
        try:
            return super().train()
        except TrainingPreempted:
            return None

    @classmethod
    def build_train_loader(cls, cfg):
        """
        detectron2's loader with the mapper named by INPUT.DATASET_MAPPER_NAME; with
        DATALOADER.SKIP_UNREADABLE_SAMPLES it also counts the skipped files (see ``SkippedFileCounter``).
        """
        loader = build_detection_train_loader(cfg, mapper=build_train_mapper(cfg))
        if cfg.DATALOADER.SKIP_UNREADABLE_SAMPLES:
            loader = SkippedFileCounter(loader, cfg.DATALOADER.MAX_UNREADABLE_SAMPLES)
        return loader

    @classmethod
    def build_optimizer(cls, cfg, model):
        solver = cfg.SOLVER
        if solver.OPTIMIZER == "SGD":
            optimizer_class, kwargs = torch.optim.SGD, {"momentum": solver.MOMENTUM, "nesterov": solver.NESTEROV}
        elif solver.OPTIMIZER == "ADAMW":
            optimizer_class, kwargs = torch.optim.AdamW, {}
        else:
            raise ValueError(f"SOLVER.OPTIMIZER={solver.OPTIMIZER!r} is not supported; use 'ADAMW' or 'SGD'")
        clip = solver.CLIP_GRADIENTS
        if clip.ENABLED and clip.CLIP_TYPE == "full_model":
            optimizer_class = with_full_model_gradient_clipping(optimizer_class, clip.CLIP_VALUE, clip.NORM_TYPE)
        else:
            optimizer_class = maybe_add_gradient_clipping(cfg, optimizer_class)
        return optimizer_class(optimizer_param_groups(cfg, model), solver.BASE_LR, **kwargs)

    @classmethod
    def build_lr_scheduler(cls, cfg, optimizer):
        """The scheduler named by SOLVER.LR_SCHEDULER_NAME (detectron2's, or DeepLab's WarmupPolyLR)."""
        return build_lr_scheduler(cfg, optimizer)

    @classmethod
    def build_evaluator(cls, cfg, dataset_name, output_folder=None):
        return build_evaluator(cfg, dataset_name, output_folder)

    @classmethod
    def test_with_TTA(cls, cfg, model):
        """
        Semantic metrics of ``model`` with test-time augmentation (TEST.AUG) on every DATASETS.TEST, written under
        ``OUTPUT_DIR/inference_TTA``; the result keys carry a ``_TTA`` suffix. Only the semantic evaluators run:
        TTA averages semantic outputs.
        """
        logger.info("Running inference with test-time augmentation ...")
        semantic_cfg = cfg.clone()
        semantic_cfg.defrost()
        semantic_cfg.MODEL.MASK_FORMER.TEST.PANOPTIC_ON = False
        semantic_cfg.MODEL.MASK_FORMER.TEST.INSTANCE_ON = False
        output_folder = os.path.join(cfg.OUTPUT_DIR, "inference_TTA")
        evaluators = [cls.build_evaluator(semantic_cfg, name, output_folder) for name in cfg.DATASETS.TEST]
        results = cls.test(cfg, SemanticSegmentorWithTTA(cfg, model), evaluators)
        return OrderedDict((k + "_TTA", v) for k, v in results.items())
