"""COCO panoptic registration (names, layout, metadata, lazy loading, errors) and the semantic-PNG preparation."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest
from detectron2.data import DatasetCatalog, MetadataCatalog
from panopticapi.utils import id2rgb
from PIL import Image

from conftest import ROOT
from mask2former.data.datasets import coco_panoptic_metadata, register_panoptic_annos_sem_seg
from mask2former.data.datasets.register_coco_panoptic_annos_semseg import register_all_coco_panoptic_annos_sem_seg

sys.path.insert(0, str(ROOT / "datasets"))
from prepare_coco_semantic_annos_from_panoptic_annos import main as prepare_semantic  # noqa: E402

NAMES = [f"coco_2017_{s}_panoptic{x}" for s in ("train", "val") for x in ("", "_with_sem_seg")]
# COCO panoptic facts: person (id 1) is the first class, banner (id 92) the first stuff class, rug-merged (id 200)
# the last of the 133; these are their contiguous ids.
PERSON, BANNER, RUG = (1, 0), (92, 80), (200, 132)


def _write_mini_coco(root, split="val2017"):
    """Two 24x32 images in COCO's layout: a person on a rug (one crowd person region), and banner + void."""
    coco = root / "coco"
    for folder in (split, f"panoptic_{split}", "annotations"):
        (coco / folder).mkdir(parents=True, exist_ok=True)
    images, annotations = [], []
    layouts = [
        [(101, PERSON[0], 0, (4, 12, 4, 12)), (102, PERSON[0], 1, (14, 20, 20, 30)), (103, RUG[0], 0, None)],
        [(201, BANNER[0], 0, (0, 24, 0, 16))],  # right half void
    ]
    for image_id, segments in enumerate(layouts, 1):
        stem = f"{image_id:012d}"
        ids = np.zeros((24, 32), dtype=np.uint32)
        for segment_id, _, _, box in segments:
            if box is None:
                ids[ids == 0] = segment_id
            else:
                y0, y1, x0, x1 = box
                ids[y0:y1, x0:x1] = segment_id
        Image.fromarray(np.full((24, 32, 3), 90, dtype=np.uint8)).save(coco / split / f"{stem}.jpg")
        Image.fromarray(id2rgb(ids)).save(coco / f"panoptic_{split}" / f"{stem}.png")
        images.append({"id": image_id, "file_name": f"{stem}.jpg", "height": 24, "width": 32})
        info = [
            {"id": s, "category_id": c, "iscrowd": crowd, "area": int((ids == s).sum())} for s, c, crowd, _ in segments
        ]
        annotations.append({"image_id": image_id, "file_name": f"{stem}.png", "segments_info": info})
    with open(coco / "annotations" / f"panoptic_{split}.json", "w") as f:
        json.dump({"images": images, "annotations": annotations, "categories": []}, f)
    return coco


@pytest.fixture
def coco_root(tmp_path):
    """A mini COCO registered under the standard names; the default registration is restored afterwards."""
    _write_mini_coco(tmp_path)
    register_all_coco_panoptic_annos_sem_seg(str(tmp_path))
    yield tmp_path
    register_all_coco_panoptic_annos_sem_seg(os.path.expanduser(os.getenv("DETECTRON2_DATASETS", "datasets")))


def test_names_layout_and_metadata_replace_detectron2s():
    root = os.path.expanduser(os.getenv("DETECTRON2_DATASETS", "datasets"))
    for name in NAMES:
        assert name in DatasetCatalog.list()
        meta = MetadataCatalog.get(name)
        split = "train2017" if "train" in name else "val2017"
        assert meta.image_root == os.path.join(root, "coco", split)
        assert meta.panoptic_root == os.path.join(root, "coco", f"panoptic_{split}")
        assert meta.panoptic_json == os.path.join(root, "coco", "annotations", f"panoptic_{split}.json")
        assert meta.json_file == MetadataCatalog.get(f"coco_2017_{split[:-4]}").json_file
        assert meta.evaluator_type == "coco_panoptic_seg" and meta.ignore_label == 255 and meta.label_divisor == 1000
        assert len(meta.thing_classes) == 80 and len(meta.stuff_classes) == 133
        assert meta.thing_classes[0] == "person" and meta.stuff_classes[-1] == "rug-merged"
        assert sorted(meta.thing_dataset_id_to_contiguous_id.values()) == list(range(80))
        assert sorted(meta.stuff_dataset_id_to_contiguous_id.values()) == list(range(133))
        for dataset_id, contiguous in (PERSON, BANNER, RUG):
            assert meta.stuff_dataset_id_to_contiguous_id[dataset_id] == contiguous
        assert (meta.get("sem_seg_root") is not None) == name.endswith("_with_sem_seg")
    assert MetadataCatalog.get("coco_2017_val_panoptic_with_sem_seg").sem_seg_root == os.path.join(
        root, "coco", "panoptic_semseg_val2017"
    )


def test_dataset_dicts(coco_root):
    assert "sem_seg_file_name" not in DatasetCatalog.get("coco_2017_val_panoptic")[0]
    with pytest.raises(FileNotFoundError, match="panoptic_semseg_val2017 does not exist.*prepare_coco_semantic"):
        DatasetCatalog.get("coco_2017_val_panoptic_with_sem_seg")
    (coco_root / "coco/panoptic_semseg_val2017").mkdir()
    with pytest.raises(FileNotFoundError, match=r"panoptic_semseg_val2017/000000000001\.png \(image 1 of"):
        DatasetCatalog.get("coco_2017_val_panoptic_with_sem_seg")
    for image_id in (1, 2):
        Image.fromarray(np.zeros((24, 32), dtype=np.uint8)).save(
            coco_root / f"coco/panoptic_semseg_val2017/{image_id:012d}.png"
        )
    dicts = DatasetCatalog.get("coco_2017_val_panoptic_with_sem_seg")
    assert [d["image_id"] for d in dicts] == [1, 2]
    first = dicts[0]
    assert first["file_name"] == str(coco_root / "coco/val2017/000000000001.jpg")
    assert first["pan_seg_file_name"] == str(coco_root / "coco/panoptic_val2017/000000000001.png")
    assert first["sem_seg_file_name"] == str(coco_root / "coco/panoptic_semseg_val2017/000000000001.png")
    assert [(s["category_id"], s["isthing"], s["iscrowd"]) for s in first["segments_info"]] == [
        (PERSON[1], True, 0),
        (PERSON[1], True, 1),
        (RUG[1], False, 0),
    ]


def test_missing_dataset_names_the_path_and_the_fix(tmp_path):
    register_panoptic_annos_sem_seg(
        "test_missing_panoptic",
        coco_panoptic_metadata(),
        image_root=str(tmp_path / "nowhere/val2017"),
        panoptic_root=str(tmp_path / "nowhere/panoptic_val2017"),
        panoptic_json=str(tmp_path / "nowhere/annotations/panoptic_val2017.json"),
        sem_seg_root=str(tmp_path / "nowhere/panoptic_semseg_val2017"),
    )
    try:
        missing = r"nowhere/annotations/panoptic_val2017.json does not exist.*README"
        with pytest.raises(FileNotFoundError, match=missing):
            DatasetCatalog.get("test_missing_panoptic_with_sem_seg")
    finally:
        for name in ("test_missing_panoptic", "test_missing_panoptic_with_sem_seg"):
            DatasetCatalog.remove(name)
            MetadataCatalog.remove(name)


def test_corrupt_json_names_the_file(coco_root):
    panoptic_json = coco_root / "coco/annotations/panoptic_val2017.json"
    panoptic_json.write_text(panoptic_json.read_text()[:100])
    with pytest.raises(ValueError, match=f"{panoptic_json} is not valid JSON.*README"):
        DatasetCatalog.get("coco_2017_val_panoptic")


def test_semantic_pngs_from_panoptic(coco_root, capsys):
    assert prepare_semantic(["--root", str(coco_root / "coco"), "--splits", "val2017", "--workers", "2"]) == 0
    assert "val2017: 2/2 images" in capsys.readouterr().err
    dicts = DatasetCatalog.get("coco_2017_val_panoptic_with_sem_seg")
    first = np.asarray(Image.open(dicts[0]["sem_seg_file_name"]))
    assert first.dtype == np.uint8 and first.shape == (24, 32)
    expected = np.full((24, 32), RUG[1], dtype=np.uint8)
    expected[4:12, 4:12] = PERSON[1]
    expected[14:20, 20:30] = PERSON[1]  # crowd regions keep their class
    np.testing.assert_array_equal(first, expected)
    second = np.asarray(Image.open(dicts[1]["sem_seg_file_name"]))
    assert (second[:, :16] == BANNER[1]).all() and (second[:, 16:] == 255).all()


def test_semantic_preparation_reports_a_missing_layout(tmp_path, capsys):
    assert prepare_semantic(["--root", str(tmp_path / "coco"), "--splits", "val2017"]) == 2
    assert "panoptic_val2017.json does not exist" in capsys.readouterr().err


def test_importing_the_package_reads_no_dataset(tmp_path):
    """Registration is lazy: with no dataset present the import works, and loading names the missing path."""
    code = (
        "import mask2former\n"
        "from detectron2.data import DatasetCatalog\n"
        "try:\n"
        "    DatasetCatalog.get('coco_2017_train_panoptic')\n"
        "except FileNotFoundError as e:\n"
        "    print(e)\n"
    )
    env = dict(os.environ, DETECTRON2_DATASETS=str(tmp_path / "empty"))
    result = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, cwd=ROOT, check=True
    )
    assert f"{tmp_path}/empty/coco/annotations/panoptic_train2017.json does not exist" in result.stdout
