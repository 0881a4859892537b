"""
``train_net.py --eval-only`` on a checkpoint gives exactly the PQ / AP / mIoU that the Trainer's periodic
evaluation logged for the same checkpoint, and with TEST.AUG.ENABLED it adds the TTA results.
"""
import sys

import pytest
from detectron2.evaluation.testing import flatten_results_dict
from detectron2.utils.env import seed_all_rng

from conftest import R50, ROOT, TINY_MODEL, make_cfg, split_overrides
from mask2former.engine import Trainer
from mask2former.toy import generate_toy_panoptic, register_toy_panoptic

sys.path.insert(0, str(ROOT))
import train_net  # noqa: E402

TOY = "eval_only_test_toy"
OPTS = [
    *TINY_MODEL,
    "MODEL.MASK_FORMER.DEC_LAYERS 3",
    "MODEL.MASK_FORMER.NUM_OBJECT_QUERIES 10",
    "MODEL.MASK_FORMER.TRAIN_NUM_POINTS 256",
    f"DATASETS.TRAIN ('{TOY}_train_panoptic',)",
    f"DATASETS.TEST ('{TOY}_val_panoptic_with_sem_seg',)",
    "DATALOADER.NUM_WORKERS 0",
    "INPUT.IMAGE_SIZE 64",
    "INPUT.MIN_SIZE_TEST 64",
    "INPUT.MAX_SIZE_TEST 96",
    "SOLVER.IMS_PER_BATCH 2",
    "SOLVER.BASE_LR 0.003",
    "SOLVER.STEPS (1000,)",
]
HEADLINE = ("panoptic_seg/PQ", "segm/AP", "sem_seg/mIoU")


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """4 iterations, evaluated and checkpointed after iterations 2 and 4."""
    root = tmp_path_factory.mktemp("toy") / "toy_panoptic"
    generate_toy_panoptic(str(root), num_train=4, num_val=2, seed=0)
    register_toy_panoptic(str(root), name=TOY)
    out = tmp_path_factory.mktemp("train")
    periodic = ["SOLVER.MAX_ITER 4", "SOLVER.CHECKPOINT_PERIOD 2", "TEST.EVAL_PERIOD 2", f"OUTPUT_DIR {out}"]
    seed_all_rng(0)
    trainer = Trainer(make_cfg(R50, OPTS + periodic))
    trainer.resume_or_load(resume=False)
    trainer.train()
    return out, trainer.storage


def _eval_only(out, checkpoint, extra=()):
    args = train_net.default_argument_parser().parse_args(
        ["--eval-only", "--config-file", str(R50)]
        + split_overrides(OPTS + [f"OUTPUT_DIR {out / 'eval'}", f"MODEL.WEIGHTS {out / checkpoint}", *extra])
    )
    return flatten_results_dict(train_net.main(args))


# The Trainer logs the evaluation after iteration i (counted from 0) at storage iteration i, the final one at MAX_ITER.
@pytest.mark.parametrize("checkpoint, iteration", [("model_0000001.pth", 1), ("model_final.pth", 4)])
def test_eval_only_reproduces_the_periodic_evaluation(trained, checkpoint, iteration):
    out, storage = trained
    logged = {}
    for key, values in storage.histories().items():
        for value, at in values.values():
            if at == iteration:
                logged[key] = value
    results = _eval_only(out, checkpoint)
    assert set(HEADLINE) <= set(results)
    assert results["sem_seg/mIoU"] > 0, "the comparison is not only between zeros"
    # Every metric of the evaluation (per-class ones too), exactly; NaN (AP of an absent size) equals NaN.
    assert {k: logged.get(k) for k in results} == pytest.approx(results, rel=0, abs=0, nan_ok=True)


def test_eval_only_with_tta_adds_semantic_results_with_a_suffix(trained):
    out, _ = trained
    results = _eval_only(out, "model_final.pth", ["TEST.AUG.ENABLED True", "TEST.AUG.MIN_SIZES (64,)"])
    plain = {k for k in results if not k.split("/")[0].endswith("_TTA")}
    assert {"panoptic_seg/PQ", "segm/AP", "sem_seg/mIoU"} <= plain
    tta = {k for k in results if k not in plain}
    assert tta and all(k.startswith("sem_seg_TTA/") for k in tta)
    assert (out / "eval" / "inference_TTA" / "results.json").is_file()
