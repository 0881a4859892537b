"""The Trainer (parameter groups, gradient clipping, schedulers, data) and a short CPU run of train_net.py."""
import json
import logging
import math
import pickle
import sys

import pytest
import torch
from detectron2.modeling import build_model
from detectron2.utils.env import seed_all_rng
from torch import nn

from conftest import CONFIGS, FIXTURES, R50, ROOT, TINY_MODEL, make_cfg
from mask2former.checkpoint import CorruptCheckpointError
from mask2former.engine import Trainer
from mask2former.toy import generate_toy_panoptic, register_toy_panoptic

sys.path.insert(0, str(ROOT))
import train_net  # noqa: E402

SWIN_T = CONFIGS / "coco/panoptic-segmentation/swin/maskformer2_swin_tiny_bs16_50ep.yaml"
TOY = "train_net_test_toy"
TINY = [
    *TINY_MODEL,
    "MODEL.MASK_FORMER.DEC_LAYERS 4",
    "MODEL.MASK_FORMER.NUM_OBJECT_QUERIES 10",
    "MODEL.MASK_FORMER.TRAIN_NUM_POINTS 256",
    f"DATASETS.TRAIN ('{TOY}_train_panoptic',)",
    "DATASETS.TEST ()",
    "DATALOADER.NUM_WORKERS 0",
    "INPUT.IMAGE_SIZE 64",
    "INPUT.MIN_SIZE_TEST 64",
    "INPUT.MAX_SIZE_TEST 96",
]


@pytest.fixture(scope="module")
def toy_dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("toy") / "toy_panoptic"
    generate_toy_panoptic(str(root), num_train=4, num_val=2, seed=0)
    register_toy_panoptic(str(root), name=TOY)
    return root


def _hyperparams(optimizer):
    """Parameter -> (lr, weight_decay) of its group; fails if a parameter is in two groups."""
    result = {}
    for group in optimizer.param_groups:
        for p in group["params"]:
            assert p not in result, "a parameter is in two groups"
            result[p] = (group["lr"], group["weight_decay"])
    return result


SOLVER = [
    "SOLVER.BASE_LR 0.01",
    "SOLVER.BACKBONE_MULTIPLIER 0.5",
    "SOLVER.WEIGHT_DECAY 0.3",
    "SOLVER.WEIGHT_DECAY_NORM 0.2",
    "SOLVER.WEIGHT_DECAY_EMBED 0.1",
]


def test_param_groups_r50(toy_dataset):
    cfg = make_cfg(R50, TINY + SOLVER + ["MODEL.BACKBONE.FREEZE_AT 2"])
    model = build_model(cfg)
    optimizer = Trainer.build_optimizer(cfg, model)
    assert isinstance(optimizer, torch.optim.AdamW)
    # backbone (FrozenBN: no norm parameters), head, head norms, embeddings: identical settings share a group
    assert len(optimizer.param_groups) == 4
    hyper = _hyperparams(optimizer)
    trainable = {name: p for name, p in model.named_parameters() if p.requires_grad}
    assert set(hyper) == set(trainable.values())
    assert any(not p.requires_grad for p in model.parameters()), "FREEZE_AT 2 freezes the stem and res2"
    expected = {
        "backbone.res3.0.conv1.weight": (0.005, 0.3),
        "sem_seg_head.pixel_decoder.input_proj.0.0.weight": (0.01, 0.3),
        "sem_seg_head.pixel_decoder.input_proj.0.1.weight": (0.01, 0.2),  # GroupNorm
        "sem_seg_head.predictor.decoder_norm.bias": (0.01, 0.2),  # LayerNorm
        "sem_seg_head.predictor.query_feat.weight": (0.01, 0.1),  # nn.Embedding
        "sem_seg_head.predictor.query_embed.weight": (0.01, 0.1),
        "sem_seg_head.predictor.level_embed.weight": (0.01, 0.1),
        "sem_seg_head.predictor.class_embed.bias": (0.01, 0.3),
    }
    for name, value in expected.items():
        assert hyper[trainable[name]] == pytest.approx(value), name


def test_param_groups_swin_position_tables_have_no_weight_decay(fixtures_dir):
    overrides = json.loads((FIXTURES / "reference_tiny/tiny_swin_overrides.json").read_text())["overrides"]
    cfg = make_cfg(SWIN_T, overrides + SOLVER + ["MODEL.WEIGHTS ''", "MODEL.DEVICE cpu"])
    model = build_model(cfg)
    hyper = _hyperparams(Trainer.build_optimizer(cfg, model))
    params = dict(model.named_parameters())
    table = params["backbone.layers.0.blocks.0.attn.relative_position_bias_table"]
    assert hyper[table] == pytest.approx((0.005, 0.0))
    assert hyper[params["backbone.layers.0.blocks.0.norm1.weight"]] == pytest.approx((0.005, 0.2))
    assert hyper[params["backbone.layers.0.blocks.0.attn.qkv.weight"]] == pytest.approx((0.005, 0.3))


class Small(nn.Module):
    def __init__(self):
        super().__init__()
        self.linear = nn.Linear(4, 3)
        self.norm = nn.LayerNorm(3)


def _grads(model, value):
    for p in model.parameters():
        p.grad = torch.full_like(p, value)


def test_full_model_gradient_clipping():
    cfg = make_cfg(
        R50,
        ["SOLVER.OPTIMIZER SGD", "SOLVER.MOMENTUM 0.0", "SOLVER.WEIGHT_DECAY 0.0", "SOLVER.BASE_LR 1.0"]
        + ["SOLVER.CLIP_GRADIENTS.CLIP_VALUE 0.5"],
    )
    model = Small()
    optimizer = Trainer.build_optimizer(cfg, model)
    assert isinstance(optimizer, torch.optim.SGD)
    before = [p.detach().clone() for p in model.parameters()]
    _grads(model, 2.0)
    count = sum(p.numel() for p in model.parameters())  # 21 values of 2: norm 2 * sqrt(21), scaled to 0.5
    optimizer.step()
    for p, p0 in zip(model.parameters(), before):
        torch.testing.assert_close(p0 - p, torch.full_like(p, 0.5 / math.sqrt(count)))
    total = torch.linalg.vector_norm(torch.cat([p.grad.flatten() for p in model.parameters()]))
    assert total.item() == pytest.approx(0.5, rel=1e-5)


def test_per_value_clipping_uses_detectron2s():
    cfg = make_cfg(
        R50,
        ["SOLVER.OPTIMIZER SGD", "SOLVER.MOMENTUM 0.0", "SOLVER.WEIGHT_DECAY 0.0", "SOLVER.BASE_LR 1.0"]
        + ["SOLVER.CLIP_GRADIENTS.CLIP_TYPE value", "SOLVER.CLIP_GRADIENTS.CLIP_VALUE 0.25"],
    )
    model = Small()
    optimizer = Trainer.build_optimizer(cfg, model)
    before = [p.detach().clone() for p in model.parameters()]
    _grads(model, 2.0)
    optimizer.step()
    for p, p0 in zip(model.parameters(), before):
        torch.testing.assert_close(p0 - p, torch.full_like(p, 0.25))


def _lr_at(cfg, iteration):
    optimizer = Trainer.build_optimizer(cfg, Small())
    scheduler = Trainer.build_lr_scheduler(cfg, optimizer)
    for _ in range(iteration):
        optimizer.step()
        scheduler.step()
    return optimizer.param_groups[0]["lr"]


def test_scheduler_named_by_the_config():
    common = ["SOLVER.BASE_LR 1.0", "SOLVER.WARMUP_ITERS 0", "SOLVER.MAX_ITER 10"]
    step = make_cfg(R50, common + ["SOLVER.LR_SCHEDULER_NAME WarmupMultiStepLR", "SOLVER.STEPS (4,)"])
    assert _lr_at(step, 3) == pytest.approx(1.0) and _lr_at(step, 5) == pytest.approx(0.1)
    poly = make_cfg(R50, common + ["SOLVER.LR_SCHEDULER_NAME WarmupPolyLR", "SOLVER.POLY_LR_POWER 0.9"])
    assert _lr_at(poly, 5) == pytest.approx(0.5**0.9)
    cosine = make_cfg(R50, common + ["SOLVER.LR_SCHEDULER_NAME WarmupCosineLR"])
    assert _lr_at(cosine, 5) == pytest.approx(0.5)


def test_md5_check_follows_the_config_switch(tmp_path):
    weights = {k: v.numpy() + 1 for k, v in Small().state_dict().items()}
    renamed = tmp_path / "my_run_abc123.pkl"  # not the md5 prefix of the file
    renamed.write_bytes(pickle.dumps({"model": weights, "__author__": "me"}))
    with pytest.raises(CorruptCheckpointError, match="MODEL.WEIGHTS_MD5_CHECK False"):
        Trainer.build_checkpointer(make_cfg(R50), Small()).load(str(renamed))
    model = Small()
    Trainer.build_checkpointer(make_cfg(R50, ["MODEL.WEIGHTS_MD5_CHECK False"]), model).load(str(renamed))
    assert all(torch.equal(model.state_dict()[k], torch.as_tensor(v)) for k, v in weights.items())


def test_unsupported_optimizer_is_explained():
    with pytest.raises(ValueError, match="SOLVER.OPTIMIZER='LAMB' is not supported"):
        Trainer.build_optimizer(make_cfg(R50, ["SOLVER.OPTIMIZER LAMB"]), Small())


def test_train_loader_uses_the_lsj_mapper(toy_dataset):
    cfg = make_cfg(R50, TINY + ["SOLVER.IMS_PER_BATCH 2"])
    batch = next(iter(Trainer.build_train_loader(cfg)))
    assert len(batch) == 2
    for item in batch:
        assert item["image"].shape == (3, 64, 64) and item["instances"].gt_masks.shape[1:] == (64, 64)
    cfg = make_cfg(R50, TINY + ["INPUT.DATASET_MAPPER_NAME detr_panoptic"])
    with pytest.raises(ValueError, match="'detr_panoptic' is not a training mapper"):
        Trainer.build_train_loader(cfg)


TRAIN = TINY + ["SOLVER.IMS_PER_BATCH 2", "SOLVER.BASE_LR 0.003", "SOLVER.STEPS (1000,)"]


@pytest.fixture(scope="module")
def trained(toy_dataset, tmp_path_factory):
    """24 iterations of the tiny model on 4 toy images (AMP requested, so the CPU fallback is exercised)."""
    out = tmp_path_factory.mktemp("train")
    cfg = make_cfg(
        R50,
        TRAIN
        + ["SOLVER.MAX_ITER 24", "SOLVER.CHECKPOINT_PERIOD 12", "SOLVER.AMP.ENABLED True", "TEST.EVAL_PERIOD 0"]
        + ["INPUT.MIN_SCALE 0.8", "INPUT.MAX_SCALE 1.2", f"OUTPUT_DIR {out}"],
    )
    seed_all_rng(1)
    records = []
    handler = logging.Handler()
    handler.emit = records.append
    logging.getLogger("mask2former").addHandler(handler)
    try:
        trainer = Trainer(cfg)
    finally:
        logging.getLogger("mask2former").removeHandler(handler)
    trainer.resume_or_load(resume=False)
    trainer.train()
    return out, trainer, [r.getMessage() for r in records]


def test_short_cpu_training_lowers_the_loss(trained):
    _, trainer, messages = trained
    assert any("SOLVER.AMP.ENABLED is ignored" in m for m in messages)
    assert type(trainer._trainer).__name__ == "SimpleTrainer"
    losses = [v for v, _ in trainer.storage.history("total_loss").values()]
    assert len(losses) == 24 and all(math.isfinite(v) for v in losses)
    first, last = sum(losses[:4]) / 4, sum(losses[-4:]) / 4
    assert last < 0.8 * first, f"loss went from {first:.2f} to {last:.2f}"


def test_checkpoints_resume_and_eval_only(trained):
    out, _, _ = trained
    assert (out / "model_0000011.pth").is_file() and (out / "model_final.pth").is_file()
    # --resume continues from the last checkpoint with its iteration counter.
    resumed = Trainer(make_cfg(R50, TRAIN + ["SOLVER.MAX_ITER 26", f"OUTPUT_DIR {out}"]))
    resumed.resume_or_load(resume=True)
    assert resumed.start_iter == 24
    resumed.train()
    assert resumed.iter == 26 and len(resumed.storage.history("total_loss").values()) == 2
    # --eval-only with the trained weights: PQ, AP and mIoU of the val split.
    opts = [part for o in TRAIN for part in o.split(" ", 1)]
    args = train_net.default_argument_parser().parse_args(
        ["--eval-only", "--config-file", str(R50)]
        + opts
        + ["OUTPUT_DIR", str(out), "MODEL.WEIGHTS", str(out / "model_final.pth")]
        + ["DATASETS.TEST", f"('{TOY}_val_panoptic_with_sem_seg',)"]
    )
    results = train_net.main(args)
    assert {"panoptic_seg", "segm", "sem_seg"} <= set(results)
    assert 0 <= results["sem_seg"]["mIoU"] <= 100
