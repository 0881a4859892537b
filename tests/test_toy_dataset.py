"""The toy panoptic dataset: COCO panoptic layout, consistent annotations, the promised content, registration."""
import filecmp
import json
import subprocess
import sys
import uuid

import cv2
import numpy as np
import pytest
from detectron2.data import DatasetCatalog, MetadataCatalog
from panopticapi.utils import rgb2id
from PIL import Image
from pycocotools import mask as mask_util

from conftest import ROOT, load_script
from mask2former.toy import generate_toy_panoptic, register_toy_panoptic


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    root = tmp_path_factory.mktemp("toy") / "toy_panoptic"
    generate_toy_panoptic(root, num_train=4, num_val=40, seed=0)
    return root


def _load(root, split):
    panoptic = json.loads((root / f"panoptic_{split}.json").read_text())
    instances = json.loads((root / "annotations" / f"instances_{split}.json").read_text())
    return panoptic, instances


def test_coco_layout(toy):
    for split, count in (("train", 4), ("val", 40)):
        panoptic, instances = _load(toy, split)
        assert len(panoptic["images"]) == len(panoptic["annotations"]) == count
        for image, ann in zip(panoptic["images"], panoptic["annotations"]):
            assert image["id"] == ann["image_id"]
            assert (toy / split / image["file_name"]).suffix == ".jpg"
            assert (toy / split / image["file_name"]).is_file()
            assert (toy / f"panoptic_{split}" / ann["file_name"]).is_file()
            assert (toy / f"panoptic_semseg_{split}" / ann["file_name"]).is_file()
        assert instances["images"] == panoptic["images"]


def test_annotations_agree_with_each_other(toy):
    panoptic, instances = _load(toy, "val")
    categories = panoptic["categories"]
    thing_ids = [c["id"] for c in categories if c["isthing"]]
    contiguous = {c["id"]: i for i, c in enumerate(categories)}
    assert [c["id"] for c in instances["categories"]] == thing_ids
    instances_by_image = {}
    for ann in instances["annotations"]:
        instances_by_image.setdefault(ann["image_id"], []).append(ann)

    for image, ann in zip(panoptic["images"], panoptic["annotations"]):
        rgb = np.asarray(Image.open(toy / "panoptic_val" / ann["file_name"]))
        ids = rgb2id(rgb)
        sem = np.asarray(Image.open(toy / "panoptic_semseg_val" / ann["file_name"]))
        photo = np.asarray(Image.open(toy / "val" / image["file_name"]))
        assert ids.shape == sem.shape == photo.shape[:2] == (image["height"], image["width"])
        assert photo.dtype == np.uint8 and photo.shape[2] == 3

        segments = ann["segments_info"]
        assert sorted(np.unique(ids).tolist()) == sorted(s["id"] for s in segments)  # no void, no stray ids
        expected_sem = np.full(ids.shape, 255)
        for s in segments:
            mask = ids == s["id"]
            ys, xs = np.nonzero(mask)
            assert s["area"] == mask.sum()
            assert s["bbox"] == [xs.min(), ys.min(), xs.max() - xs.min() + 1, ys.max() - ys.min() + 1]
            expected_sem[mask] = contiguous[s["category_id"]]
        np.testing.assert_array_equal(sem, expected_sem)

        stuff = [s["category_id"] for s in segments if s["category_id"] not in thing_ids]
        assert len(stuff) == len(set(stuff)), "one segment per stuff class"
        things = [s for s in segments if s["category_id"] in thing_ids]
        rles = instances_by_image.get(image["id"], [])
        assert len(rles) == len(things)
        for s, inst in zip(things, rles):
            assert inst["category_id"] == s["category_id"] and inst["area"] == s["area"]
            np.testing.assert_array_equal(mask_util.decode(inst["segmentation"]).astype(bool), ids == s["id"])


def test_content_needs_learning(toy):
    """At least 3 thing classes in random colours, 2 stuff classes, varied scales and sizes, contact, empties."""
    panoptic, _ = _load(toy, "val")
    things = [c["id"] for c in panoptic["categories"] if c["isthing"]]
    assert len(things) >= 3 and len(panoptic["categories"]) - len(things) >= 2
    assert len({(im["height"], im["width"]) for im in panoptic["images"]}) > 10

    areas, colors, touching_pairs, empty_images = [], {c: [] for c in things}, 0, 0
    for image, ann in zip(panoptic["images"], panoptic["annotations"]):
        ids = rgb2id(np.asarray(Image.open(toy / "panoptic_val" / ann["file_name"])))
        photo = np.asarray(Image.open(toy / "val" / image["file_name"])).astype(float)
        thing_segments = [s for s in ann["segments_info"] if s["category_id"] in things]
        empty_images += not thing_segments
        grown = {}
        for s in thing_segments:
            mask = ids == s["id"]
            areas.append(s["area"])
            colors[s["category_id"]].append(photo[mask].mean(0))
            grown[s["id"]] = cv2.dilate(mask.astype(np.uint8), np.ones((3, 3), np.uint8)).astype(bool)
        for i, a in enumerate(thing_segments):
            for b in thing_segments[i + 1:]:
                touching_pairs += bool((grown[a["id"]] & (ids == b["id"])).any())

    assert empty_images >= 1
    assert touching_pairs >= 10
    assert max(areas) / min(areas) > 10
    for category_id, category_colors in colors.items():
        assert len(category_colors) >= 5, f"class {category_id} rarely appears"
        # The colour of a thing says nothing about its class: each class spans the colour range.
        assert np.ptp(np.stack(category_colors), axis=0).min() > 120, f"class {category_id} colours too uniform"


def test_deterministic_from_seed(tmp_path):
    for name, seed in (("a", 5), ("b", 5), ("c", 6)):
        generate_toy_panoptic(tmp_path / name, num_train=3, num_val=2, seed=seed)
    files = [p.relative_to(tmp_path / "a") for p in sorted((tmp_path / "a").rglob("*")) if p.is_file()]
    assert len(files) == 4 + 3 * 3 + 2 * 3  # 4 json; image, panoptic PNG and semantic PNG per image
    _, mismatch, errors = filecmp.cmpfiles(tmp_path / "a", tmp_path / "b", files, shallow=False)
    assert mismatch == [] and errors == []
    _, mismatch, _ = filecmp.cmpfiles(tmp_path / "a", tmp_path / "c", files, shallow=False)
    assert len(mismatch) > 0


def test_refuses_to_overwrite(tmp_path):
    (tmp_path / "toy").mkdir()
    (tmp_path / "toy" / "keep.txt").write_text("x")
    with pytest.raises(FileExistsError, match="not empty"):
        generate_toy_panoptic(tmp_path / "toy", num_train=1, num_val=1)


def test_registration(toy):
    name = f"toytest_{uuid.uuid4().hex[:8]}"
    register_toy_panoptic(root=str(toy), name=name)
    train = DatasetCatalog.get(f"{name}_train_panoptic")
    val = DatasetCatalog.get(f"{name}_val_panoptic_with_sem_seg")
    assert len(train) == 4 and len(val) == 40
    for d in val:
        for key in ("file_name", "pan_seg_file_name", "sem_seg_file_name"):
            assert (toy / d[key]).is_file()
        for s in d["segments_info"]:
            assert s["isthing"] == (s["category_id"] < 3)
            assert 0 <= s["category_id"] < 6
    meta = MetadataCatalog.get(f"{name}_val_panoptic_with_sem_seg")
    assert meta.evaluator_type == "coco_panoptic_seg"
    assert meta.thing_classes == ["disc", "triangle", "cross"]
    assert meta.stuff_classes == meta.thing_classes + ["stripes", "checker", "speckle"]
    assert meta.thing_dataset_id_to_contiguous_id == {1: 0, 2: 1, 4: 2}
    assert meta.ignore_label == 255 and meta.label_divisor == 1000
    assert meta.json_file.endswith("annotations/instances_val.json")
    assert MetadataCatalog.get(f"{name}_train_panoptic").get("sem_seg_root") is None


def test_registered_on_import_and_missing_dataset_explains_itself(tmp_path, monkeypatch):
    import mask2former  # noqa: F401  (registers the default toy_panoptic_* datasets)

    assert "toy_panoptic_train_panoptic" in DatasetCatalog.list()
    assert "toy_panoptic_val_panoptic_with_sem_seg" in DatasetCatalog.list()
    name = f"toytest_{uuid.uuid4().hex[:8]}"
    register_toy_panoptic(root=str(tmp_path / "nowhere"), name=name)
    with pytest.raises(FileNotFoundError, match="prepare_toy_panoptic.py"):
        DatasetCatalog.get(f"{name}_train_panoptic")


def test_importing_the_package_leaves_the_generator_out():
    code = "import sys, mask2former; print(sorted(m for m in sys.modules if m.startswith('mask2former.toy')))"
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    assert run.stdout.strip() == "[]"


def test_cli(tmp_path, capsys):
    script = ROOT / "datasets" / "prepare_toy_panoptic.py"
    args = ["--root", str(tmp_path / "t"), "--num-train", "2", "--num-val", "1"]
    first = subprocess.run([sys.executable, str(script)] + args, capture_output=True, text=True, check=True)
    assert "wrote 2 train + 1 val images" in first.stdout

    cli = load_script(script)
    assert cli.main(args) == 0
    assert "already" in capsys.readouterr().out
    assert cli.main(args + ["--force"]) == 0
    assert "wrote" in capsys.readouterr().out
    assert cli.main(["--root", str(tmp_path / "u"), "--num-val", "0"]) == 2
    assert "num_val=0" in capsys.readouterr().err
