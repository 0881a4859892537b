"""
Each datasets/prepare_*.py on a small fake copy of its dataset's raw layout, then the result loaded back through
DatasetCatalog by the registration (registered for the fake root; the default registration is restored after).
"""
import json

import numpy as np
import pytest
from detectron2.data import DatasetCatalog, MetadataCatalog
from panopticapi.utils import id2rgb, rgb2id
from PIL import Image
from pycocotools import mask as mask_util

from conftest import ROOT, load_script
from mask2former.data.datasets.loaders import datasets_root
from mask2former.data.datasets.register_ade20k_full import register_all_ade20k_full
from mask2former.data.datasets.register_ade20k_instance import register_all_ade20k_instance
from mask2former.data.datasets.register_ade20k_panoptic import register_all_ade20k_panoptic
from mask2former.data.datasets.register_ade20k_sem_seg import register_all_ade20k_sem_seg
from mask2former.data.datasets.register_detectron2_builtins import register_all_cityscapes_checked
from mask2former.data.datasets.register_mapillary_vistas import register_all_mapillary_vistas
from mask2former.data.datasets.register_mapillary_vistas_panoptic import register_all_mapillary_vistas_panoptic


def _script(name):
    return load_script(ROOT / "datasets" / f"{name}.py").main


@pytest.fixture
def registered_at(tmp_path):
    """Register the given families for ``tmp_path``; their default registration is restored afterwards."""
    used = []

    def register(*functions):
        for function in functions:
            function(str(tmp_path))
            used.append(function)
        return tmp_path

    yield register
    for function in used:
        function(datasets_root())


# ADE20K (SceneParse150) facts: PNG value = id + 1; wall 0 and floor 3 are stuff, bed 7 and person 12 things,
# the 1st and 4th of the 100 instance classes.
WALL, FLOOR, BED, PERSON = 0, 3, 7, 12
BED_INSTANCE_CLASS, PERSON_INSTANCE_CLASS = 1, 4


def _write_ade20k(root):
    """
    One 24x32 image per split: wall on top, floor below, a void strip on the right; a bed (instance 1) on the
    floor and a person (instance 2) overlapping the wall. The semantic PNG marks the bed, not the person.
    """
    ade = root / "ADEChallengeData2016"
    for dirname, stem in (("training", "ADE_train_00000001"), ("validation", "ADE_val_00000001")):
        for folder in ("images", "annotations", "annotations_instance"):
            (ade / folder / dirname).mkdir(parents=True)
        semantic = np.full((24, 32), WALL + 1, dtype=np.uint8)
        semantic[12:] = FLOOR + 1
        semantic[:, 28:] = 0
        semantic[14:20, 2:10] = BED + 1
        instance = np.zeros((24, 32, 3), dtype=np.uint8)
        instance[14:20, 2:10] = (BED_INSTANCE_CLASS, 1, 0)
        instance[2:8, 12:16] = (PERSON_INSTANCE_CLASS, 2, 0)
        Image.fromarray(np.full((24, 32, 3), 100, dtype=np.uint8)).save(ade / "images" / dirname / f"{stem}.jpg")
        Image.fromarray(semantic).save(ade / "annotations" / dirname / f"{stem}.png")
        Image.fromarray(instance).save(ade / "annotations_instance" / dirname / f"{stem}.png")
    return ade


def test_ade20k_sem_seg(tmp_path, registered_at, capsys):
    ade = _write_ade20k(tmp_path)
    assert _script("prepare_ade20k_sem_seg")(["--root", str(ade), "--workers", "1"]) == 0
    registered_at(register_all_ade20k_sem_seg)
    (record,) = DatasetCatalog.get("ade20k_sem_seg_val")
    assert record["file_name"] == str(ade / "images/validation/ADE_val_00000001.jpg")
    assert record["sem_seg_file_name"] == str(ade / "annotations_detectron2/validation/ADE_val_00000001.png")
    labels = np.asarray(Image.open(record["sem_seg_file_name"]))
    assert labels[0, 0] == WALL and labels[23, 0] == FLOOR and labels[16, 5] == BED
    assert (labels[:, 28:] == 255).all()
    assert len(DatasetCatalog.get("ade20k_sem_seg_train")) == 1


def test_ade20k_pan_seg(tmp_path, registered_at):
    ade = _write_ade20k(tmp_path)
    assert _script("prepare_ade20k_sem_seg")(["--root", str(ade), "--workers", "1"]) == 0
    assert _script("prepare_ade20k_pan_seg")(["--root", str(ade), "--workers", "2"]) == 0
    panoptic = json.loads((ade / "ade20k_panoptic_val.json").read_text())
    assert [c["id"] for c in panoptic["categories"]] == list(range(150))
    image = {"id": "ADE_val_00000001", "file_name": "ADE_val_00000001.jpg", "width": 32, "height": 24}
    assert panoptic["images"] == [image]

    registered_at(register_all_ade20k_panoptic)
    (record,) = DatasetCatalog.get("ade20k_panoptic_val")
    assert record["image_id"] == "ADE_val_00000001"
    assert record["file_name"] == str(ade / "images/validation/ADE_val_00000001.jpg")
    assert record["sem_seg_file_name"] == str(ade / "annotations_detectron2/validation/ADE_val_00000001.png")
    segment_ids = rgb2id(np.asarray(Image.open(record["pan_seg_file_name"]).convert("RGB")).astype(np.uint32))
    by_category = {s["category_id"]: s for s in record["segments_info"]}
    assert sorted(by_category) == [WALL, FLOOR, BED, PERSON]  # contiguous ids equal SceneParse150 ids
    assert [by_category[c]["isthing"] for c in (WALL, FLOOR, BED, PERSON)] == [False, False, True, True]
    expected = {
        WALL: np.zeros((24, 32), bool),
        FLOOR: np.zeros((24, 32), bool),
        BED: np.zeros((24, 32), bool),
        PERSON: np.zeros((24, 32), bool),
    }
    expected[WALL][:12, :28] = True
    expected[FLOOR][12:, :28] = True
    expected[BED][14:20, 2:10] = True
    expected[FLOOR][14:20, 2:10] = False
    expected[PERSON][2:8, 12:16] = True
    expected[WALL][2:8, 12:16] = False  # the instance wins over the semantic annotation
    for category, mask in expected.items():
        segment = by_category[category]
        np.testing.assert_array_equal(segment_ids == segment["id"], mask)
        assert segment["area"] == mask.sum()
    assert (segment_ids[:, 28:] == 0).all()
    assert by_category[PERSON]["bbox"] == [12, 2, 4, 6]


def test_ade20k_ins_seg(tmp_path, registered_at):
    ade = _write_ade20k(tmp_path)
    assert _script("prepare_ade20k_ins_seg")(["--root", str(ade), "--workers", "1"]) == 0
    registered_at(register_all_ade20k_instance)
    (record,) = DatasetCatalog.get("ade20k_instance_val")
    assert record["image_id"] == "ADE_val_00000001" and (record["height"], record["width"]) == (24, 32)
    thing_classes = MetadataCatalog.get("ade20k_instance_val").thing_classes
    annotations = sorted(record["annotations"], key=lambda a: a["category_id"])
    assert [thing_classes[a["category_id"]] for a in annotations] == ["bed", "person"]
    assert [a["category_id"] for a in annotations] == [BED_INSTANCE_CLASS - 1, PERSON_INSTANCE_CLASS - 1]
    person = np.zeros((24, 32), dtype=np.uint8)
    person[2:8, 12:16] = 1
    np.testing.assert_array_equal(mask_util.decode(annotations[1]["segmentation"]), person)
    assert annotations[1]["bbox"] == [12, 2, 4, 6]
    written = json.loads((ade / "ade20k_instance_val.json").read_text())
    assert {a["category_id"] for a in written["annotations"]} == {BED, PERSON}  # dataset ids: SceneParse150 ids
    assert len(written["categories"]) == 100


def test_ade20k_missing_instance_annotations(tmp_path, capsys):
    ade = _write_ade20k(tmp_path)
    for png in (ade / "annotations_instance/validation").iterdir():
        png.unlink()
    (ade / "annotations_instance/validation").rmdir()
    assert _script("prepare_ade20k_ins_seg")(["--root", str(ade)]) == 2
    assert "annotations_instance/validation does not exist" in capsys.readouterr().err


# ADE20K-full facts: "wall" is full-ADE20K class 2978 and training id 0; "adding machine" class 3148, id 846;
# class 1 is not among the 847. A _seg.png encodes a class as red = class // 256 * 10, green = class % 256.
def _class_rgb(class_id):
    return (class_id // 256 * 10, class_id % 256, 0)


def test_ade20k_full_sem_seg(tmp_path, registered_at):
    full = tmp_path / "ADE20K_2021_17_01"
    layouts = {"training": ("ADE_train_00000001", 520, 540), "validation": ("ADE_val_00000001", 20, 30)}
    for dirname, (stem, height, width) in layouts.items():
        scene = full / "images/ADE" / dirname / "cultural/apse_indoor"
        scene.mkdir(parents=True)
        seg = np.zeros((height, width, 3), dtype=np.uint8)
        seg[:] = _class_rgb(2978)
        seg[: height // 2, : width // 2] = _class_rgb(3148)
        seg[height - 2 :, :] = _class_rgb(1)
        Image.fromarray(np.full((height, width, 3), 50, dtype=np.uint8)).save(scene / f"{stem}.jpg")
        Image.fromarray(seg).save(scene / f"{stem}_seg.png")
    assert _script("prepare_ade20k_full_sem_seg")(["--root", str(full), "--workers", "1"]) == 0

    registered_at(register_all_ade20k_full)
    (record,) = DatasetCatalog.get("ade20k_full_sem_seg_val")
    assert record["file_name"] == str(full / "images_detectron2/validation/ADE_val_00000001.jpg")
    labels = np.asarray(Image.open(record["sem_seg_file_name"]))
    assert record["sem_seg_file_name"].endswith(".tif") and labels.dtype == np.uint16 and labels.shape == (20, 30)
    assert labels[0, 0] == 846 and labels[15, 20] == 0 and (labels[18:] == 65535).all()
    (train,) = DatasetCatalog.get("ade20k_full_sem_seg_train")
    # shorter side 520 > 512: resized to 512 x round(540 / 520 * 512)
    assert Image.open(train["file_name"]).size == (532, 512)
    assert np.asarray(Image.open(train["sem_seg_file_name"])).shape == (512, 532)
    assert MetadataCatalog.get("ade20k_full_sem_seg_train").stuff_classes[0] == "wall"


# Mapillary Vistas v1.2 facts: label 13 is "Road" (stuff), 19 "Person" (thing), 65 "Unlabeled" (ignored);
# panoptic category ids are label + 1.
ROAD, PERSON_LABEL, UNLABELED = 13, 19, 65


def _write_mapillary(root, *, v2_layout_split="training"):
    """One 16x24 image per split; the ``v2_layout_split`` keeps its annotations under v1.2/ as a v2.0 download."""
    vistas = root / "mapillary_vistas"
    for split, stem in (("training", "train_img"), ("validation", "val_img")):
        annotations = vistas / split / ("v1.2" if split == v2_layout_split else "")
        for folder in (vistas / split / "images", annotations / "labels", annotations / "panoptic"):
            folder.mkdir(parents=True, exist_ok=True)
        labels = np.full((16, 24), ROAD, dtype=np.uint8)
        labels[2:8, 4:10] = PERSON_LABEL
        labels[12:, :] = UNLABELED
        label_png = Image.fromarray(labels, mode="P")
        label_png.putpalette([v for i in range(256) for v in (i, 255 - i, 0)])
        label_png.save(annotations / "labels" / f"{stem}.png")
        ids = np.zeros((16, 24), dtype=np.uint32)
        ids[labels == ROAD] = 5
        ids[labels == PERSON_LABEL] = 9
        Image.fromarray(id2rgb(ids)).save(annotations / "panoptic" / f"{stem}.png")
        Image.fromarray(np.zeros((16, 24, 3), dtype=np.uint8)).save(vistas / split / "images" / f"{stem}.jpg")
        segments = [
            {"id": 5, "category_id": ROAD + 1, "iscrowd": 0, "area": int((ids == 5).sum())},
            {"id": 9, "category_id": PERSON_LABEL + 1, "iscrowd": 0, "area": int((ids == 9).sum())},
        ]
        annotation = {"image_id": stem, "file_name": f"{stem}.png", "segments_info": segments}
        panoptic = {"images": [], "annotations": [annotation]}
        (annotations / "panoptic" / "panoptic_2018.json").write_text(json.dumps(panoptic))
    return vistas


def test_mapillary_vistas(tmp_path, registered_at, capsys):
    vistas = _write_mapillary(tmp_path)
    assert _script("prepare_mapillary_vistas")(["--root", str(vistas)]) == 0
    assert "training 1 images, validation 1 images" in capsys.readouterr().out
    assert (vistas / "training/labels").is_symlink()

    registered_at(register_all_mapillary_vistas, register_all_mapillary_vistas_panoptic)
    (semantic,) = DatasetCatalog.get("mapillary_vistas_sem_seg_train")
    assert semantic["sem_seg_file_name"] == str(vistas / "training/labels/train_img.png")
    labels = np.asarray(Image.open(semantic["sem_seg_file_name"]))  # palette indices, as the mappers read them
    assert labels[0, 0] == ROAD and labels[3, 5] == PERSON_LABEL and labels[15, 0] == UNLABELED
    (panoptic,) = DatasetCatalog.get("mapillary_vistas_panoptic_val")
    assert panoptic["file_name"] == str(vistas / "validation/images/val_img.jpg")
    assert panoptic["sem_seg_file_name"] == str(vistas / "validation/labels/val_img.png")
    segments = [(s["category_id"], s["isthing"]) for s in panoptic["segments_info"]]
    assert segments == [(ROAD, False), (PERSON_LABEL, True)]
    meta = MetadataCatalog.get("mapillary_vistas_panoptic_val")
    assert meta.stuff_classes[ROAD] == "Road" and meta.thing_classes[PERSON_LABEL] == "Person"


def test_mapillary_vistas_colour_labels_are_refused(tmp_path, capsys):
    vistas = _write_mapillary(tmp_path, v2_layout_split=None)
    label = vistas / "validation/labels/val_img.png"
    Image.open(label).convert("RGB").save(label)
    assert _script("prepare_mapillary_vistas")(["--root", str(vistas)]) == 2
    assert f"{label} is a RGB image" in capsys.readouterr().err


# Cityscapes facts (cityscapesscripts' label table): road has label id 7 and train id 0, car label id 26 and
# train id 13; unlabeled regions get train id 255.
def _write_cityscapes(root):
    cityscapes = root / "cityscapes"
    for split in ("train", "val"):
        stem = f"frankfurt_000000_00029{4 if split == 'val' else 5}"
        images = cityscapes / "leftImg8bit" / split / "frankfurt"
        gt = cityscapes / "gtFine" / split / "frankfurt"
        images.mkdir(parents=True)
        gt.mkdir(parents=True)
        Image.fromarray(np.zeros((16, 32, 3), dtype=np.uint8)).save(images / f"{stem}_leftImg8bit.png")
        polygons = {
            "imgHeight": 16,
            "imgWidth": 32,
            "objects": [
                {"label": "road", "polygon": [[0, 8], [31, 8], [31, 15], [0, 15]]},
                {"label": "car", "polygon": [[4, 10], [12, 10], [12, 14], [4, 14]]},
            ],
        }
        (gt / f"{stem}_gtFine_polygons.json").write_text(json.dumps(polygons))
        instance_ids = np.zeros((16, 32), dtype=np.uint16)
        instance_ids[8:, :] = 7
        instance_ids[10:15, 4:13] = 26000
        Image.fromarray(instance_ids).save(gt / f"{stem}_gtFine_instanceIds.png")
        label_ids = np.where(instance_ids >= 1000, instance_ids // 1000, instance_ids).astype(np.uint8)
        Image.fromarray(label_ids).save(gt / f"{stem}_gtFine_labelIds.png")
    return cityscapes


def test_cityscapes(tmp_path, registered_at):
    cityscapes = _write_cityscapes(tmp_path)
    assert _script("prepare_cityscapes")(["--root", str(cityscapes), "--workers", "1"]) == 0
    registered_at(register_all_cityscapes_checked)
    (semantic,) = DatasetCatalog.get("cityscapes_fine_sem_seg_val")
    train_ids = np.asarray(Image.open(semantic["sem_seg_file_name"]))
    assert semantic["sem_seg_file_name"].endswith("frankfurt_000000_000294_gtFine_labelTrainIds.png")
    assert train_ids[0, 0] == 255 and train_ids[9, 20] == 0 and train_ids[12, 8] == 13
    (panoptic,) = DatasetCatalog.get("cityscapes_fine_panoptic_val")
    assert panoptic["image_id"] == "frankfurt_000000_000294"
    assert sorted((s["category_id"], s["iscrowd"]) for s in panoptic["segments_info"]) == [(0, 0), (13, 0)]
    segment_ids = rgb2id(np.asarray(Image.open(panoptic["pan_seg_file_name"]).convert("RGB")).astype(np.uint32))
    assert segment_ids[12, 8] == 26000 and segment_ids[9, 20] == 7 and segment_ids[0, 0] == 0
    (instance,) = DatasetCatalog.get("cityscapes_fine_instance_seg_val")
    assert [a["category_id"] for a in instance["annotations"]] == [2]  # car, the 3rd thing class


def test_cityscapes_missing_labels(tmp_path, capsys):
    assert _script("prepare_cityscapes")(["--root", str(tmp_path / "cityscapes")]) == 2
    assert f"{tmp_path}/cityscapes/gtFine does not exist" in capsys.readouterr().err
