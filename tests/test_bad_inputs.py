"""
What a user can get wrong, and what they get back. Each row of the table below is one test (its id is the row's
name); an error must name the problem and the fix, and inputs that are merely unusual must work.

| row | input | expected outcome |
|---|---|---|
| missing_dataset | the toy dataset was never generated | FileNotFoundError naming the folder and the command that generates it |
| missing_coco | COCO panoptic is not where DETECTRON2_DATASETS says | FileNotFoundError naming the missing file and datasets/README.md |
| corrupt_annotation_json | the panoptic annotation JSON is cut short | ValueError naming the JSON file |
| image_with_no_segments | an annotated image without segments; one whose segments the crop removes | skipped by the training mapper; zero targets give finite losses |
| unknown_config_key | ``MODEL.MASK_FORMER.NUM_QUERIES`` (the key is NUM_OBJECT_QUERIES), in a YAML file or on the command line | KeyError / AssertionError naming the full key |
| missing_checkpoint | MODEL.WEIGHTS names a file that does not exist | FileNotFoundError naming the file and MODEL.WEIGHTS |
| truncated_checkpoint_pkl / _pth | a checkpoint cut in half (an interrupted copy) | CorruptCheckpointError: "truncated", names the file |
| truncated_zoo_checkpoint | the same for a zoo-named ``*_<md5>.pkl`` | CorruptCheckpointError from the md5 check, both prefixes |
| grayscale / rgba / png16 / exif_jpeg | images of unusual kinds | read as upright RGB uint8 of the displayed size; the model's outputs have that size |
| tiny_1x1 / wide_20000 | a 1x1 image, a 20000x64 panorama | the same |
| unreadable_image | a text file named ``.jpg`` | ValueError naming the file |
"""
import functools
import re

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import R50, TINY_MODEL, make_cfg
from mask2former.checkpoint import CorruptCheckpointError, SafeCheckpointer


ROWS = {}


def row(check):
    ROWS[check.__name__] = check
    return check


# ---------------------------------------------------------------------------------------------------------------
# Datasets and configs


@row
def missing_dataset(tmp_path):
    from detectron2.data import DatasetCatalog

    from mask2former.toy import register_toy_panoptic

    root = tmp_path / "never_prepared"
    register_toy_panoptic(str(root), name="bad_inputs_missing")
    with pytest.raises(FileNotFoundError) as error:
        DatasetCatalog.get("bad_inputs_missing_train_panoptic")
    assert str(root) in str(error.value) and "prepare_toy_panoptic.py" in str(error.value)


@row
def corrupt_annotation_json(tmp_path):
    from detectron2.data import DatasetCatalog

    from mask2former.toy import generate_toy_panoptic, register_toy_panoptic, split_paths

    root = tmp_path / "toy"
    generate_toy_panoptic(str(root), num_train=1, num_val=1)
    panoptic_json = split_paths(str(root), "train")["panoptic_json"]
    with open(panoptic_json) as f:
        text = f.read()
    with open(panoptic_json, "w") as f:
        f.write(text[: len(text) // 2])
    register_toy_panoptic(str(root), name="bad_inputs_corrupt")
    with pytest.raises(ValueError, match=re.escape(panoptic_json)):
        DatasetCatalog.get("bad_inputs_corrupt_train_panoptic")


@row
def missing_coco(tmp_path):
    from detectron2.data import DatasetCatalog

    from mask2former.data.datasets.register_coco_panoptic_annos_semseg import (
        coco_panoptic_metadata,
        register_panoptic_annos_sem_seg,
    )

    coco = tmp_path / "coco"
    panoptic_json = coco / "annotations/panoptic_train2017.json"
    register_panoptic_annos_sem_seg(
        "bad_inputs_coco_train_panoptic",
        coco_panoptic_metadata(),
        image_root=str(coco / "train2017"),
        panoptic_root=str(coco / "panoptic_train2017"),
        panoptic_json=str(panoptic_json),
        sem_seg_root=str(coco / "panoptic_semseg_train2017"),
    )
    with pytest.raises(FileNotFoundError) as error:
        DatasetCatalog.get("bad_inputs_coco_train_panoptic")
    assert str(panoptic_json) in str(error.value) and "datasets/README.md" in str(error.value)


@row
def image_with_no_segments(tmp_path):
    from detectron2.modeling import build_model

    from mask2former.data import build_train_mapper

    cfg = make_cfg(R50, TINY)
    image, pan_seg = tmp_path / "image.jpg", tmp_path / "pan.png"
    Image.fromarray(np.full((48, 64, 3), 128, np.uint8)).save(image)
    Image.fromarray(np.zeros((48, 64, 3), np.uint8)).save(pan_seg)  # every pixel void
    record = {"file_name": str(image), "pan_seg_file_name": str(pan_seg), "height": 48, "width": 64, "image_id": 1}
    mapper = build_train_mapper(cfg)
    # As in the original: an image without segments trains "no object" for every query ...
    no_segments = mapper({**record, "segments_info": []})
    assert len(no_segments["instances"]) == 0
    # ... and a segment listed but not visible (as after a crop) is a target with an empty mask.
    hidden = {"id": 5, "category_id": 2, "iscrowd": 0, "isthing": True}
    example = mapper({**record, "segments_info": [hidden]})
    assert len(example["instances"]) == 1 and not example["instances"].gt_masks.any()
    torch.manual_seed(0)
    model = build_model(cfg).train()
    losses = model([no_segments, example])
    assert losses and all(torch.isfinite(v).all() for v in losses.values()), losses
    # INPUT.LSJ_DROP_EMPTY_TARGETS: the image is skipped instead (the loader draws another one).
    cfg.INPUT.LSJ_DROP_EMPTY_TARGETS = True
    assert build_train_mapper(cfg)({**record, "segments_info": []}) is None


@row
def unknown_config_key(tmp_path):
    # yacs raises KeyError for a YAML file and AssertionError for command-line options; both name the full key.
    user_yaml = tmp_path / "user.yaml"
    user_yaml.write_text(f"_BASE_: {R50}\nMODEL:\n  MASK_FORMER:\n    NUM_QUERIES: 50\n")
    with pytest.raises(KeyError, match="MODEL.MASK_FORMER.NUM_QUERIES"):
        make_cfg(user_yaml)
    with pytest.raises(AssertionError, match="Non-existent key: MODEL.MASK_FORMER.NUM_QUERIES"):
        make_cfg(R50, ["MODEL.MASK_FORMER.NUM_QUERIES 50"])


# ---------------------------------------------------------------------------------------------------------------
# Checkpoints


class Net(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.linear = torch.nn.Linear(64, 64)


def _cut_in_half(path):
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


@row
def missing_checkpoint(tmp_path):
    path = tmp_path / "model_final.pth"
    with pytest.raises(FileNotFoundError, match=re.escape(str(path))) as error:
        SafeCheckpointer(Net()).load(str(path))
    assert "MODEL.WEIGHTS" in str(error.value)


@row
def truncated_checkpoint_pkl(tmp_path):
    import pickle

    path = tmp_path / "weights.pkl"
    weights = {k: v.numpy() for k, v in Net().state_dict().items()}
    path.write_bytes(pickle.dumps({"model": weights, "__author__": "me"}))
    _cut_in_half(path)
    with pytest.raises(CorruptCheckpointError, match=f"{re.escape(str(path))} is truncated"):
        SafeCheckpointer(Net()).load(str(path))


@row
def truncated_checkpoint_pth(tmp_path):
    path = tmp_path / "model_0000999.pth"
    torch.save({"model": Net().state_dict()}, path)
    _cut_in_half(path)
    with pytest.raises(CorruptCheckpointError, match=f"{re.escape(str(path))} is truncated"):
        SafeCheckpointer(Net()).load(str(path))


@row
def truncated_zoo_checkpoint(tmp_path):
    import hashlib
    import pickle

    data = pickle.dumps({"model": {k: v.numpy() for k, v in Net().state_dict().items()}, "__author__": "FAIR"})
    digest = hashlib.md5(data).hexdigest()[:6]
    path = tmp_path / f"model_final_{digest}.pkl"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CorruptCheckpointError, match=f"'{digest}'.*'{hashlib.md5(data[: len(data) // 2]).hexdigest()[:6]}'"):
        SafeCheckpointer(Net()).load(str(path))


# ---------------------------------------------------------------------------------------------------------------
# Images


TINY = [
    *TINY_MODEL,
    "MODEL.MASK_FORMER.DEC_LAYERS 3",
    "MODEL.MASK_FORMER.NUM_OBJECT_QUERIES 8",
    "MODEL.MASK_FORMER.TRAIN_NUM_POINTS 64",
    "INPUT.IMAGE_SIZE 64",
    "INPUT.MIN_SIZE_TEST 64",
    "INPUT.MAX_SIZE_TEST 96",
]


@functools.lru_cache(maxsize=None)
def _predictor():
    from mask2former.visualization import Predictor

    torch.manual_seed(0)
    return Predictor(make_cfg(R50, TINY))


def _read_and_predict(path):
    """The image as the demo reads it, after checking that the model's outputs have its size."""
    from mask2former.visualization import read_image

    image = read_image(str(path))
    assert image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] == 3
    outputs = _predictor()(image)
    assert outputs["sem_seg"].shape[1:] == outputs["panoptic_seg"][0].shape == image.shape[:2]
    return image


@row
def grayscale(tmp_path):
    path = tmp_path / "gray.png"
    Image.fromarray(np.full((20, 30), 77, np.uint8), "L").save(path)
    image = _read_and_predict(path)
    assert image.shape == (20, 30, 3) and (image == 77).all()


@row
def rgba(tmp_path):
    path = tmp_path / "rgba.png"
    pixels = np.zeros((20, 30, 4), np.uint8)
    pixels[..., 0], pixels[:, :15, 3], pixels[:, 15:, 3] = 200, 255, 0  # left half opaque red, right transparent
    Image.fromarray(pixels, "RGBA").save(path)
    image = _read_and_predict(path)
    assert image.shape == (20, 30, 3)
    assert (image[:, :15] == [200, 0, 0]).all()


@row
def png16(tmp_path):
    path = tmp_path / "depth16.png"
    values = np.zeros((20, 30), np.uint16)
    values[:, 15:] = 65535
    Image.fromarray(values).save(path)
    assert Image.open(path).mode.startswith("I")
    image = _read_and_predict(path)
    assert image.shape == (20, 30, 3)
    assert (image[:, :15] == 0).all() and (image[:, 15:] == 255).all()


@row
def exif_jpeg(tmp_path):
    # Stored 40 wide x 20 high with orientation 6 ("rotate 90 CW to display"): displayed 20 wide x 40 high.
    path = tmp_path / "phone.jpg"
    pixels = np.zeros((20, 40, 3), np.uint8)
    pixels[:, :20] = 255  # left half of the stored image white
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(pixels).save(path, exif=exif, quality=95)
    image = _read_and_predict(path)
    assert image.shape == (40, 20, 3)
    assert image[:18].mean() > 230 and image[22:].mean() < 25  # stored left half is displayed on top


@row
def tiny_1x1(tmp_path):
    path = tmp_path / "dot.png"
    Image.fromarray(np.array([[[1, 2, 3]]], np.uint8)).save(path)
    assert _read_and_predict(path).tolist() == [[[1, 2, 3]]]


@row
def wide_20000(tmp_path):
    path = tmp_path / "panorama.png"
    Image.fromarray(np.zeros((64, 20000, 3), np.uint8)).save(path)
    assert _read_and_predict(path).shape == (64, 20000, 3)


@row
def unreadable_image(tmp_path):
    path = tmp_path / "notes.jpg"
    path.write_text("not an image")
    from mask2former.visualization import read_image

    with pytest.raises(ValueError, match=re.escape(str(path))):
        read_image(str(path))


@pytest.mark.parametrize("name", list(ROWS))
def test_bad_input(name, tmp_path):
    ROWS[name](tmp_path)
