"""
Dataset names of the original Mask2Former's configs: registered by importing mask2former, with the metadata the
evaluators and the visualizer read; lazy registration; a missing folder names itself and the command that fixes it.
"""
import json
import os
import subprocess
import sys

import pytest
import yaml
from detectron2.data import DatasetCatalog, MetadataCatalog

from conftest import ROOT
from mask2former.data.datasets.loaders import datasets_root
from mask2former.data.datasets.register_ade20k_full import register_all_ade20k_full
from mask2former.data.datasets.register_ade20k_instance import register_all_ade20k_instance
from mask2former.data.datasets.register_ade20k_panoptic import register_all_ade20k_panoptic
from mask2former.data.datasets.register_ade20k_sem_seg import register_all_ade20k_sem_seg
from mask2former.data.datasets.register_detectron2_builtins import (
    register_all_cityscapes_checked,
    register_coco_instances_checked,
)
from mask2former.data.datasets.register_mapillary_vistas import register_all_mapillary_vistas
from mask2former.data.datasets.register_mapillary_vistas_panoptic import register_all_mapillary_vistas_panoptic

REGISTRATIONS = (
    register_all_ade20k_sem_seg,
    register_all_ade20k_panoptic,
    register_all_ade20k_instance,
    register_all_ade20k_full,
    register_all_mapillary_vistas,
    register_all_mapillary_vistas_panoptic,
    register_coco_instances_checked,
    register_all_cityscapes_checked,
)


def _config_dataset_names(fixtures_dir):
    names = set()
    for path in (fixtures_dir / "original_configs").rglob("*.yaml"):
        datasets = yaml.load(path.read_text(), Loader=yaml.CSafeLoader)["DATASETS"]
        names.update(datasets["TRAIN"])
        names.update(datasets["TEST"])
    return names


def test_every_dataset_of_the_original_configs_is_registered(fixtures_dir):
    names = _config_dataset_names(fixtures_dir)
    assert len(names) == 20  # 47 configs, 10 train/test pairs
    assert sorted(names - set(DatasetCatalog.list())) == []
    for split in ("train", "val"):
        assert f"ade20k_full_sem_seg_{split}" in DatasetCatalog.list()


# (name, evaluator_type, ignore_label, number of stuff classes, number of thing classes) of the original's
# registrations (detectron2's for COCO and Cityscapes).
EXPECTED = [
    ("ade20k_sem_seg_val", "sem_seg", 255, 150, None),
    ("ade20k_panoptic_val", "ade20k_panoptic_seg", 255, 150, 100),
    ("ade20k_instance_val", "coco", None, None, 100),
    ("ade20k_full_sem_seg_val", "sem_seg", 65535, 847, None),
    ("mapillary_vistas_sem_seg_val", "sem_seg", 65, 65, None),
    ("mapillary_vistas_panoptic_val", "mapillary_vistas_panoptic_seg", 65, 65, 65),
    ("coco_2017_val", "coco", None, None, 80),
    ("cityscapes_fine_sem_seg_val", "cityscapes_sem_seg", 255, 19, 8),
    ("cityscapes_fine_instance_seg_val", "cityscapes_instance", None, 19, 8),
    ("cityscapes_fine_panoptic_val", "cityscapes_panoptic_seg", 255, 19, 19),
]


@pytest.mark.parametrize("name,evaluator_type,ignore_label,num_stuff,num_things", EXPECTED)
def test_metadata(name, evaluator_type, ignore_label, num_stuff, num_things):
    meta = MetadataCatalog.get(name)
    assert meta.evaluator_type == evaluator_type
    assert meta.get("ignore_label") == ignore_label
    assert len(meta.get("stuff_classes") or []) == (num_stuff or 0)
    assert len(meta.get("thing_classes") or []) == (num_things or 0)
    if meta.get("stuff_colors") is not None:
        assert len(meta.stuff_colors) == num_stuff
    if evaluator_type.endswith("panoptic_seg"):
        assert meta.label_divisor == 1000
        assert os.path.basename(meta.panoptic_json).endswith(".json")


def test_ade20k_class_facts():
    # SceneParse150: "wall" (0) and "window " (8, detectron2's spelling) lead; "flag" is the 150th; the 100
    # instance classes start with bed (7) and end with flag (149).
    semantic = MetadataCatalog.get("ade20k_sem_seg_train")
    assert semantic.stuff_classes[0] == "wall" and semantic.stuff_classes[8] == "window "
    assert semantic.stuff_colors[0] == [120, 120, 120] and semantic.stuff_colors[149] == [92, 0, 255]
    panoptic = MetadataCatalog.get("ade20k_panoptic_train")
    assert panoptic.stuff_dataset_id_to_contiguous_id == {i: i for i in range(150)}
    assert panoptic.thing_dataset_id_to_contiguous_id[7] == 7 and 0 not in panoptic.thing_dataset_id_to_contiguous_id
    assert panoptic.thing_classes[0] == "bed" and panoptic.thing_classes[-1] == "flag"
    assert panoptic.json_file.endswith("ADEChallengeData2016/ade20k_instance_train.json")
    assert panoptic.image_root.endswith("ADEChallengeData2016/images/training")
    instance = MetadataCatalog.get("ade20k_instance_train")
    assert instance.thing_dataset_id_to_contiguous_id[7] == 0 and instance.thing_dataset_id_to_contiguous_id[149] == 99
    assert set(instance.thing_dataset_id_to_contiguous_id) == set(panoptic.thing_dataset_id_to_contiguous_id)
    full = MetadataCatalog.get("ade20k_full_sem_seg_val").stuff_classes
    assert full[0] == "wall" and full[846] == "adding machine, totalizer, totaliser"


def test_mapillary_vistas_class_facts():
    semantic = MetadataCatalog.get("mapillary_vistas_sem_seg_train")
    assert semantic.stuff_classes[0] == "Bird" and semantic.stuff_classes[-1] == "Ego Vehicle"
    panoptic = MetadataCatalog.get("mapillary_vistas_panoptic_train")
    assert panoptic.stuff_dataset_id_to_contiguous_id == {i + 1: i for i in range(65)}
    things = panoptic.thing_dataset_id_to_contiguous_id
    assert len(things) == 37 and things[20] == 19 and 14 not in things  # Person is a thing, Road is not
    assert panoptic.json_file is None
    assert panoptic.panoptic_json.endswith("mapillary_vistas/training/panoptic/panoptic_2018.json")


@pytest.fixture
def empty_root(tmp_path):
    for register in REGISTRATIONS:
        register(str(tmp_path))
    yield tmp_path
    for register in REGISTRATIONS:
        register(datasets_root())


MISSING = [
    ("ade20k_sem_seg_train", "ADEChallengeData2016/images/training", "prepare_ade20k_sem_seg.py"),
    ("ade20k_panoptic_val", "ADEChallengeData2016/ade20k_panoptic_val.json", "prepare_ade20k_pan_seg.py"),
    ("ade20k_instance_val", "ADEChallengeData2016/ade20k_instance_val.json", "prepare_ade20k_ins_seg.py"),
    ("ade20k_full_sem_seg_val", "ADE20K_2021_17_01/images_detectron2/validation", "prepare_ade20k_full_sem_seg.py"),
    ("mapillary_vistas_sem_seg_val", "mapillary_vistas/validation/images", "prepare_mapillary_vistas.py"),
    ("mapillary_vistas_panoptic_train", "mapillary_vistas/training/panoptic/panoptic_2018.json", "prepare_mapillary"),
    ("coco_2017_train", "coco/annotations/instances_train2017.json", "datasets/README.md"),
    ("cityscapes_fine_sem_seg_val", "cityscapes/leftImg8bit/val", "prepare_cityscapes.py"),
    ("cityscapes_fine_instance_seg_train", "cityscapes/leftImg8bit/train", "prepare_cityscapes.py"),
    ("cityscapes_fine_panoptic_val", "cityscapes/leftImg8bit/val", "prepare_cityscapes.py"),
]


@pytest.mark.parametrize("name,missing,fix", MISSING)
def test_missing_folder_names_itself_and_the_fix(empty_root, name, missing, fix):
    with pytest.raises(FileNotFoundError) as error:
        DatasetCatalog.get(name)
    message = str(error.value)
    assert message.startswith(f"{empty_root}/{missing}") and " does not exist: " in message and fix in message


def test_cityscapes_missing_train_ids_name_the_script(empty_root):
    image_dir = empty_root / "cityscapes/leftImg8bit/val/frankfurt"
    gt_dir = empty_root / "cityscapes/gtFine/val/frankfurt"
    image_dir.mkdir(parents=True)
    gt_dir.mkdir(parents=True)
    (gt_dir / "frankfurt_000000_000294_gtFine_polygons.json").write_text("{}")
    with pytest.raises(FileNotFoundError, match="000294_gtFine_labelTrainIds.png does not exist.*prepare_cityscapes"):
        DatasetCatalog.get("cityscapes_fine_sem_seg_val")


def test_a_registration_replaces_the_previous_one(tmp_path):
    register_all_ade20k_sem_seg(str(tmp_path / "a"))
    register_all_ade20k_sem_seg(str(tmp_path / "b"))
    try:
        image_root = MetadataCatalog.get("ade20k_sem_seg_val").image_root
        assert image_root == str(tmp_path / "b/ADEChallengeData2016/images/validation")
        with pytest.raises(FileNotFoundError, match=f"{tmp_path}/b/"):
            DatasetCatalog.get("ade20k_sem_seg_val")
    finally:
        register_all_ade20k_sem_seg(datasets_root())


def test_importing_the_package_reads_no_dataset_file(tmp_path):
    """With every dataset folder present but empty of files, importing opens and lists nothing under the root."""
    root = tmp_path / "datasets"
    for folder in ("ADEChallengeData2016", "ADE20K_2021_17_01", "mapillary_vistas", "coco", "cityscapes"):
        (root / folder).mkdir(parents=True)
    code = (
        "import sys\n"
        f"root = {str(root)!r}\n"
        "touched = []\n"
        "def audit(event, args):\n"
        "    if event in ('open', 'os.listdir', 'os.scandir') and args and str(args[0]).startswith(root):\n"
        "        touched.append((event, str(args[0])))\n"
        "sys.addaudithook(audit)\n"
        "import mask2former\n"
        "from detectron2.data import DatasetCatalog\n"
        "assert 'ade20k_panoptic_val' in DatasetCatalog.list()\n"
        "print('touched', touched)\n"
    )
    env = dict(os.environ, DETECTRON2_DATASETS=str(root))
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, cwd=ROOT)
    assert result.returncode == 0, result.stderr
    assert "touched []" in result.stdout


def test_malformed_panoptic_json_names_the_file(empty_root):
    validation = empty_root / "mapillary_vistas/validation"
    panoptic_dir = validation / "panoptic"
    for folder in (panoptic_dir, validation / "images", validation / "labels"):
        folder.mkdir(parents=True)
    panoptic_json = panoptic_dir / "panoptic_2018.json"
    panoptic_json.write_text('{"annotations": [')
    with pytest.raises(ValueError, match=f"{panoptic_json} is not a panoptic annotation file"):
        DatasetCatalog.get("mapillary_vistas_panoptic_val")
    segments = [{"id": 1, "category_id": 66, "iscrowd": 0}]  # 66 would be "unlabeled", which has no category
    annotations = [{"image_id": "a", "file_name": "a.png", "segments_info": segments}]
    panoptic_json.write_text(json.dumps({"annotations": annotations}))
    with pytest.raises(ValueError, match="image a has a segment of unknown category 66"):
        DatasetCatalog.get("mapillary_vistas_panoptic_val")
