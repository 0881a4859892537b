"""
Bad files met during training: a truncated JPEG, a garbage panoptic PNG and a garbage semantic PNG in a copy of
the toy dataset. By default the error names the file and its dataset; with DATALOADER.SKIP_UNREADABLE_SAMPLES the
samples are skipped, counted in metrics.json, and training stops past DATALOADER.MAX_UNREADABLE_SAMPLES.
"""
import json
import logging
import os

import pytest
from detectron2.data import DatasetCatalog

from conftest import R50, TINY_MODEL, make_cfg
from mask2former.data import build_train_mapper
from mask2former.data.dataset_mappers import UnreadableFileError
from mask2former.data.dataset_mappers.unreadable import SKIPPED_FILES_KEY
from mask2former.engine import Trainer
from mask2former.toy import generate_toy_panoptic, register_toy_panoptic

TOY = "unreadable_toy"
TRAIN = f"{TOY}_train_panoptic"
BASE = [
    *TINY_MODEL,
    "MODEL.MASK_FORMER.DEC_LAYERS 2",
    "MODEL.MASK_FORMER.NUM_OBJECT_QUERIES 8",
    "MODEL.MASK_FORMER.TRAIN_NUM_POINTS 256",
    f"DATASETS.TRAIN ('{TRAIN}',)",
    "DATASETS.TEST ()",
    "INPUT.IMAGE_SIZE 64",
    "SOLVER.IMS_PER_BATCH 2",
    "DATALOADER.ASPECT_RATIO_GROUPING False",  # samples reach the trainer in the order they are mapped
    "SOLVER.BASE_LR 0.001",
    "TEST.EVAL_PERIOD 0",
]


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    """Six toy images; image 2 is a truncated JPEG, the panoptic PNG of 3 and the semantic PNG of 4 are garbage."""
    root = tmp_path_factory.mktemp("unreadable") / "toy_panoptic"
    generate_toy_panoptic(str(root), num_train=6, num_val=1, seed=0)
    register_toy_panoptic(str(root), name=TOY)
    jpeg = root / "train" / "000002.jpg"
    jpeg.write_bytes(jpeg.read_bytes()[: os.path.getsize(jpeg) // 2])
    (root / "panoptic_train" / "000003.png").write_bytes(b"\x89PNG\r\n\x1a\n" + os.urandom(200))
    (root / "panoptic_semseg_train" / "000004.png").write_bytes(b"not a png at all")
    dicts = {os.path.basename(d["file_name"]): d for d in DatasetCatalog.get(f"{TRAIN}_with_sem_seg")}
    return root, dicts


def test_errors_name_the_file_and_the_dataset(toy):
    root, dicts = toy
    mapper = build_train_mapper(make_cfg(R50, BASE))
    with pytest.raises(UnreadableFileError) as error:
        mapper(dicts["000002.jpg"])
    message = str(error.value)
    assert str(root / "train" / "000002.jpg") in message and f"dataset '{TRAIN}'" in message
    assert "DATALOADER.SKIP_UNREADABLE_SAMPLES" in message
    with pytest.raises(UnreadableFileError, match=f"panoptic_train/000003.png \\(dataset '{TRAIN}'\\)"):
        mapper(dicts["000003.jpg"])
    semantic = build_train_mapper(
        make_cfg(R50, BASE + ["INPUT.DATASET_MAPPER_NAME mask_former_semantic", "INPUT.CROP.ENABLED False"])
    )
    with pytest.raises(UnreadableFileError, match=f"panoptic_semseg_train/000004.png \\(dataset '{TRAIN}'\\)"):
        semantic(dicts["000004.jpg"])
    assert semantic(dicts["000001.jpg"])["sem_seg"].shape[-2:] == semantic(dicts["000001.jpg"])["image"].shape[-2:]


def test_mapper_skips_and_reports_each_file_once(toy, caplog):
    _, dicts = toy
    mapper = build_train_mapper(make_cfg(R50, BASE + ["DATALOADER.SKIP_UNREADABLE_SAMPLES True"]))
    with caplog.at_level(logging.WARNING):
        assert mapper(dicts["000002.jpg"]) is None
        assert mapper(dicts["000002.jpg"]) is None
        assert mapper(dicts["000003.jpg"]) is None
    warnings = [r.getMessage() for r in caplog.records if "Skipping a training sample whose file cannot be read" in r.getMessage()]
    assert len(warnings) == 2 and "000002.jpg" in warnings[0] and "000003.png" in warnings[1]
    # The next sample carries the skipped files to the main process, once.
    first, second = mapper(dicts["000001.jpg"]), mapper(dicts["000005.jpg"])
    assert [os.path.basename(f) for f in first[SKIPPED_FILES_KEY]] == ["000002.jpg", "000003.png"]
    assert SKIPPED_FILES_KEY not in second


def test_mapper_stops_past_the_limit(toy):
    _, dicts = toy
    cfg = make_cfg(R50, BASE + ["DATALOADER.SKIP_UNREADABLE_SAMPLES True", "DATALOADER.MAX_UNREADABLE_SAMPLES 1"])
    mapper = build_train_mapper(cfg)
    assert mapper(dicts["000002.jpg"]) is None
    with pytest.raises(RuntimeError, match="2 training samples were skipped .*MAX_UNREADABLE_SAMPLES=1"):
        mapper(dicts["000003.jpg"])


def _train(tmp_path, overrides):
    tmp_path.mkdir(exist_ok=True)
    cfg = make_cfg(R50, BASE + ["DATALOADER.NUM_WORKERS 1", f"OUTPUT_DIR {tmp_path}", *overrides])
    trainer = Trainer(cfg)
    trainer.resume_or_load(resume=False)
    trainer.train()
    return [json.loads(line) for line in (tmp_path / "metrics.json").read_text().splitlines()]


def test_training_error_names_the_file(toy, tmp_path):
    """Without the switch, the worker's error reaches the trainer with the file and dataset named."""
    with pytest.raises(UnreadableFileError, match=f"cannot read .*/00000(2.jpg|3.png) \\(dataset '{TRAIN}'\\)"):
        _train(tmp_path, ["SOLVER.MAX_ITER 6"])


def test_training_skips_counts_and_stops_at_the_limit(toy, tmp_path):
    records = _train(tmp_path / "skip", ["SOLVER.MAX_ITER 3", "DATALOADER.SKIP_UNREADABLE_SAMPLES True"])
    assert records[-1]["iteration"] == 2
    # The first 6 samples are one pass over the 6 images: the JPEG and the panoptic PNG are met (the semantic
    # PNG is not read by this mapper), and reported with the good sample drawn in place of each.
    assert records[-1]["data/unreadable_files_skipped"] == 2
    overrides = ["SOLVER.MAX_ITER 6", "DATALOADER.SKIP_UNREADABLE_SAMPLES True", "DATALOADER.MAX_UNREADABLE_SAMPLES 1"]
    with pytest.raises(RuntimeError, match="MAX_UNREADABLE_SAMPLES=1"):
        _train(tmp_path / "limit", overrides)
