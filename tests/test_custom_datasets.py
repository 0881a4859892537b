"""Registering custom semantic, instance and panoptic datasets, and the errors that name a mismatched file."""
import json
import uuid

import numpy as np
import pytest
from detectron2.data import DatasetCatalog, MetadataCatalog
from PIL import Image
from pycocotools import mask as mask_util

from mask2former.data import register_instance_dataset, register_panoptic_annos_sem_seg, register_semantic_dataset
from mask2former.toy import write_split

CLASSES = ["road", "grass", "water"]


def _name():
    return f"custom_{uuid.uuid4().hex[:8]}"


def _image(path, height, width, seed=0):
    rgb = np.random.default_rng(seed).integers(0, 256, size=(height, width, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(path)


@pytest.fixture
def semantic(tmp_path):
    """Two images (10x12 and 8x6) with labels using every class and the ignore value."""
    (tmp_path / "images").mkdir()
    (tmp_path / "labels").mkdir()
    for stem, (height, width) in (("a", (10, 12)), ("b", (8, 6))):
        _image(tmp_path / "images" / f"{stem}.jpg", height, width)
        label = np.zeros((height, width), dtype=np.uint8)
        label[:, : width // 3] = 1
        label[:, width // 3 : 2 * width // 3] = 2
        label[0, 0] = 255
        Image.fromarray(label).save(tmp_path / "labels" / f"{stem}.png")
    return tmp_path


def test_semantic_dataset(semantic):
    name = _name()
    register_semantic_dataset(name, str(semantic / "images"), str(semantic / "labels"), CLASSES, ignore_label=255)
    dicts = DatasetCatalog.get(name)
    assert [(d["image_id"], d["height"], d["width"]) for d in dicts] == [("a", 10, 12), ("b", 8, 6)]
    assert dicts[1]["file_name"] == str(semantic / "images" / "b.jpg")
    assert dicts[1]["sem_seg_file_name"] == str(semantic / "labels" / "b.png")
    meta = MetadataCatalog.get(name)
    assert meta.evaluator_type == "sem_seg"
    assert meta.stuff_classes == CLASSES
    assert meta.ignore_label == 255
    assert meta.sem_seg_root == str(semantic / "labels")


def _register_semantic(root):
    name = _name()
    register_semantic_dataset(name, str(root / "images"), str(root / "labels"), CLASSES)
    return name


def test_semantic_label_outside_the_classes(semantic):
    label = np.full((8, 6), 3, dtype=np.uint8)
    Image.fromarray(label).save(semantic / "labels" / "b.png")
    name = _register_semantic(semantic)
    with pytest.raises(ValueError, match=r"b\.png holds label ids \[3\] outside the 3 classes"):
        DatasetCatalog.get(name)


def test_semantic_image_and_label_sizes_differ(semantic):
    Image.fromarray(np.zeros((8, 7), dtype=np.uint8)).save(semantic / "labels" / "b.png")
    name = _register_semantic(semantic)
    with pytest.raises(ValueError, match=r"b\.png is 7x8 .*images/b\.jpg is 6x8"):
        DatasetCatalog.get(name)


def test_semantic_missing_label_at_load_not_at_registration(semantic):
    (semantic / "labels" / "a.png").unlink()
    name = _register_semantic(semantic)  # registration reads nothing
    with pytest.raises(FileNotFoundError, match=r"labels/a\.png does not exist"):
        DatasetCatalog.get(name)
    missing = _name()
    register_semantic_dataset(missing, str(semantic / "nowhere"), str(semantic / "labels"), CLASSES)
    with pytest.raises(FileNotFoundError, match="nowhere does not exist"):
        DatasetCatalog.get(missing)


def test_semantic_registration_checks_its_arguments(semantic):
    with pytest.raises(ValueError, match="ignore_label=1 is the id of class 'grass'"):
        register_semantic_dataset(_name(), "i", "l", CLASSES, ignore_label=1)
    with pytest.raises(ValueError, match="class names"):
        register_semantic_dataset(_name(), "i", "l", [])


@pytest.fixture
def instance(tmp_path):
    """A COCO instance json over two images, with category ids 5 and 7, a polygon and an RLE mask."""
    (tmp_path / "images").mkdir()
    _image(tmp_path / "images" / "x.jpg", 20, 30)
    _image(tmp_path / "images" / "y.jpg", 16, 16)
    mask = np.zeros((16, 16), dtype=np.uint8, order="F")
    mask[4:10, 3:12] = 1
    rle = mask_util.encode(mask)
    rle["counts"] = rle["counts"].decode("ascii")
    coco = {
        "images": [
            {"id": 1, "file_name": "x.jpg", "height": 20, "width": 30},
            {"id": 2, "file_name": "y.jpg", "height": 16, "width": 16},
        ],
        "annotations": [
            {"id": 1, "image_id": 1, "category_id": 7, "bbox": [2, 2, 10, 8], "area": 80, "iscrowd": 0,
             "segmentation": [[2, 2, 12, 2, 12, 10, 2, 10]]},
            {"id": 2, "image_id": 2, "category_id": 5, "bbox": [3, 4, 9, 6], "area": 54, "iscrowd": 0,
             "segmentation": rle},
        ],
        "categories": [{"id": 7, "name": "boat"}, {"id": 5, "name": "buoy"}],
    }
    (tmp_path / "instances.json").write_text(json.dumps(coco))
    return tmp_path, coco


def _register_instance(root, classes=None):
    name = _name()
    register_instance_dataset(name, str(root / "instances.json"), str(root / "images"), classes=classes)
    return name


def test_instance_dataset(instance):
    root, _ = instance
    name = _register_instance(root, classes=["buoy", "boat"])
    meta = MetadataCatalog.get(name)
    assert meta.evaluator_type == "coco"
    assert meta.json_file == str(root / "instances.json")
    assert meta.thing_classes == ["buoy", "boat"]  # known before the json is read
    dicts = DatasetCatalog.get(name)
    assert [d["file_name"] for d in dicts] == [str(root / "images" / "x.jpg"), str(root / "images" / "y.jpg")]
    assert [[a["category_id"] for a in d["annotations"]] for d in dicts] == [[1], [0]]  # ids sorted: 5 -> 0, 7 -> 1
    assert meta.thing_dataset_id_to_contiguous_id == {5: 0, 7: 1}
    assert meta.thing_classes == ["buoy", "boat"]


def test_instance_classes_must_match_the_json(instance):
    root, _ = instance
    name = _register_instance(root, classes=["boat", "buoy"])
    with pytest.raises(ValueError, match=r"instances\.json lists the categories \['buoy', 'boat'\]"):
        DatasetCatalog.get(name)


def _rewrite(root, coco):
    (root / "instances.json").write_text(json.dumps(coco))
    return _register_instance(root)


def test_instance_category_outside_the_classes(instance):
    root, coco = instance
    coco["annotations"][0]["category_id"] = 9
    with pytest.raises(ValueError, match=r"instances\.json: Encountered category_id=9"):
        DatasetCatalog.get(_rewrite(root, coco))


def test_instance_image_size_differs_from_the_json(instance):
    root, coco = instance
    coco["images"][0]["width"] = 31
    with pytest.raises(ValueError, match=r"x\.jpg is 30x20 \(WxH\) but .*instances\.json says 31x20"):
        DatasetCatalog.get(_rewrite(root, coco))


def test_instance_mask_size_differs_from_the_image(instance):
    root, coco = instance
    coco["annotations"][1]["segmentation"]["size"] = [16, 15]
    with pytest.raises(ValueError, match=r"instances\.json: an RLE mask of image 2 .*y\.jpg"):
        DatasetCatalog.get(_rewrite(root, coco))


def test_instance_missing_files(instance):
    root, _ = instance
    (root / "images" / "y.jpg").unlink()
    name = _register_instance(root)
    with pytest.raises(FileNotFoundError, match=r"y\.jpg \(image 2 of .*instances\.json\) does not exist"):
        DatasetCatalog.get(name)
    (root / "instances.json").unlink()
    with pytest.raises(FileNotFoundError, match=r"instances\.json does not exist"):
        DatasetCatalog.get(name)


# Two of the toy dataset's categories (its writer lays out the files): disc (id 1, a thing), stripes (11, stuff).
PANOPTIC_METADATA = {
    "thing_classes": ["disc"],
    "stuff_classes": ["disc", "stripes"],
    "thing_dataset_id_to_contiguous_id": {1: 0},
    "stuff_dataset_id_to_contiguous_id": {1: 0, 11: 1},
}


@pytest.fixture
def panoptic(tmp_path):
    """One 12x16 image in COCO panoptic layout: a disc (category 1) on stripes (category 11)."""
    disc = np.zeros((12, 16), dtype=bool)
    disc[3:8, 4:11] = True
    image = np.random.default_rng(0).integers(0, 256, size=(12, 16, 3), dtype=np.uint8)
    paths = {
        "image_root": str(tmp_path / "images"),
        "panoptic_root": str(tmp_path / "panoptic"),
        "panoptic_json": str(tmp_path / "panoptic.json"),
        "sem_seg_root": str(tmp_path / "semantic"),
        "instances_json": str(tmp_path / "annotations" / "instances.json"),
    }
    write_split(tmp_path, "x", [(image, [(1, disc), (11, ~disc)])])
    for key, written in (
        ("image_root", "x"),
        ("panoptic_root", "panoptic_x"),
        ("panoptic_json", "panoptic_x.json"),
        ("sem_seg_root", "panoptic_semseg_x"),
        ("instances_json", "annotations/instances_x.json"),
    ):
        (tmp_path / written).rename(paths[key])
    return tmp_path, paths


def test_panoptic_dataset(panoptic):
    root, paths = panoptic
    name = _name()
    register_panoptic_annos_sem_seg(name, PANOPTIC_METADATA, **paths)
    (d,) = DatasetCatalog.get(name + "_with_sem_seg")
    assert d["file_name"] == str(root / "images" / "000001.jpg")
    assert d["sem_seg_file_name"] == str(root / "semantic" / "000001.png")
    assert [(s["category_id"], s["isthing"]) for s in d["segments_info"]] == [(0, True), (1, False)]
    meta = MetadataCatalog.get(name)
    assert meta.evaluator_type == "coco_panoptic_seg" and meta.json_file == paths["instances_json"]


def test_panoptic_category_outside_the_classes(panoptic):
    _, paths = panoptic
    name = _name()
    register_panoptic_annos_sem_seg(name, dict(PANOPTIC_METADATA, stuff_dataset_id_to_contiguous_id={1: 0}), **paths)
    with pytest.raises(ValueError, match=r"panoptic\.json has a segment of category_id 11"):
        DatasetCatalog.get(name)


def test_panoptic_missing_png(panoptic):
    root, paths = panoptic
    (root / "semantic" / "000001.png").unlink()
    name = _name()
    register_panoptic_annos_sem_seg(name, PANOPTIC_METADATA, **paths)
    assert len(DatasetCatalog.get(name)) == 1  # the set without semantic PNGs does not need them
    with pytest.raises(FileNotFoundError, match=r"semantic/000001\.png \(image 1 of .*panoptic\.json\)"):
        DatasetCatalog.get(name + "_with_sem_seg")


def test_toy_dataset_registered_for_every_task():
    import mask2former  # noqa: F401  (registers the toy datasets, reading nothing)

    for split in ("train", "val"):
        assert MetadataCatalog.get(f"toy_panoptic_{split}_sem_seg").evaluator_type == "sem_seg"
        assert MetadataCatalog.get(f"toy_panoptic_{split}_sem_seg").stuff_classes == [
            "disc", "triangle", "cross", "stripes", "checker", "speckle"
        ]
        assert MetadataCatalog.get(f"toy_panoptic_{split}_instance").evaluator_type == "coco"
        assert MetadataCatalog.get(f"toy_panoptic_{split}_instance").thing_classes == ["disc", "triangle", "cross"]
