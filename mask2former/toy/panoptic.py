"""
The generator of the project's own small panoptic dataset, written in the exact COCO panoptic layout.

Things are discs, triangles and crosses in random colours (told apart only by shape), of varied scale,
overlapping and touching one another; stuff is two or three background regions, each class a texture (stripes,
checkerboard, speckle) in shades of its own hue. Layout under ``root``, as COCO's::

    {train,val}/NNNNNN.jpg                      images
    panoptic_{train,val}.json                   COCO panoptic annotations
    panoptic_{train,val}/NNNNNN.png             segment ids, RGB-encoded (panopticapi's id2rgb)
    panoptic_semseg_{train,val}/NNNNNN.png      contiguous class ids over all classes, 255 = ignore
    annotations/instances_{train,val}.json      COCO instance annotations of the thing classes (RLE)

The same images serve the three tasks: panoptic (the COCO panoptic files), semantic (the image folder and the
semantic PNG folder, ADE20K-style) and instance (the COCO instance json); see ``register_toy_panoptic``.

Each image is drawn from its own random stream, ``numpy.random.default_rng((seed, split, index))``, so the
dataset is a pure function of the seed.
"""
import colorsys
import json
import math
import os
import shutil
import tempfile

import cv2
import numpy as np
from panopticapi.utils import id2rgb
from PIL import Image
from pycocotools import mask as mask_util

from ..data.datasets.register_toy_panoptic import (
    CATEGORIES,
    IGNORE_LABEL,
    SPLITS,
    STUFF,
    THINGS,
    split_paths,
    toy_panoptic_metadata,
)

MIN_SIDE, MAX_SIDE = 128, 192
MAX_THINGS = 5
EMPTY_IMAGE_PROB = 0.1
NEAR_PROB = 0.4  # chance that a new thing is placed against an existing one (touching or overlapping)
MIN_VISIBLE_FRACTION = 0.6  # of a thing's full area that stays visible after occlusion and cropping
MIN_VISIBLE_AREA = 80
MIN_RADIUS, MAX_RADIUS_FRACTION = 10.0, 0.3  # thing circumradius: pixels, fraction of the shorter side


def generate_toy_panoptic(root, num_train=400, num_val=50, seed=0):
    """
    Write the dataset to ``root`` (which must not exist yet or be empty). It is built in a temporary folder next
    to ``root`` and moved into place at the end, so an interrupted run leaves no half-written dataset.
    """
    if num_train < 1 or num_val < 1:
        raise ValueError(f"num_train={num_train} and num_val={num_val} must both be >= 1")
    root = os.path.abspath(root)
    if os.path.isdir(root) and os.listdir(root):
        raise FileExistsError(f"{root} exists and is not empty; delete it or choose another root")
    parent = os.path.dirname(root)
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=".toy_panoptic_", dir=parent)
    try:
        for split_index, (split, count) in enumerate(zip(SPLITS, (num_train, num_val))):
            samples = (render_image(np.random.default_rng((seed, split_index, i))) for i in range(count))
            write_split(tmp, split, samples)
        if os.path.isdir(root):
            os.rmdir(root)
        os.replace(tmp, root)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return root


def write_split(root, split, samples):
    """
    Write one split from ``samples``, an iterable of ``(image (H, W, 3) uint8, segments)`` where segments is a
    list of ``(dataset category_id, bool mask)``; pixels in no segment are void (id 0, semantic 255).
    """
    paths = split_paths(root, split)
    for key in ("image_root", "panoptic_root", "sem_seg_root"):
        os.makedirs(paths[key])
    os.makedirs(os.path.dirname(paths["instances_json"]), exist_ok=True)
    contiguous = toy_panoptic_metadata()["stuff_dataset_id_to_contiguous_id"]

    images, panoptic_anns, instance_anns = [], [], []
    thing_ids = {c["id"] for c in THINGS}
    for index, (image, segments) in enumerate(samples):
        image_id = index + 1
        stem = f"{image_id:06d}"
        height, width = image.shape[:2]
        Image.fromarray(image).save(os.path.join(paths["image_root"], stem + ".jpg"), quality=92)

        id_map = np.zeros((height, width), dtype=np.uint32)
        sem_seg = np.full((height, width), IGNORE_LABEL, dtype=np.uint8)
        segments_info = []
        for k, (category_id, mask) in enumerate(segments):
            segment_id = category_id * 1000 + k + 1
            id_map[mask] = segment_id
            sem_seg[mask] = contiguous[category_id]
            bbox = _bbox(mask)
            area = int(mask.sum())
            segments_info.append(
                {"id": segment_id, "category_id": category_id, "area": area, "bbox": bbox, "iscrowd": 0}
            )
            if category_id in thing_ids:
                rle = mask_util.encode(np.asfortranarray(mask.astype(np.uint8)))
                rle["counts"] = rle["counts"].decode("ascii")
                instance_anns.append(
                    {
                        "id": len(instance_anns) + 1,
                        "image_id": image_id,
                        "category_id": category_id,
                        "segmentation": rle,
                        "area": area,
                        "bbox": bbox,
                        "iscrowd": 0,
                    }
                )
        Image.fromarray(id2rgb(id_map)).save(os.path.join(paths["panoptic_root"], stem + ".png"))
        Image.fromarray(sem_seg).save(os.path.join(paths["sem_seg_root"], stem + ".png"))
        images.append({"id": image_id, "file_name": stem + ".jpg", "height": height, "width": width})
        panoptic_anns.append({"image_id": image_id, "file_name": stem + ".png", "segments_info": segments_info})

    info = {"description": f"toy panoptic dataset, {split} split", "version": "1.0"}
    _dump(
        paths["instances_json"],
        {
            "info": info,
            "licenses": [],
            "images": images,
            "annotations": instance_anns,
            "categories": [{"id": c["id"], "name": c["name"], "supercategory": "shape"} for c in THINGS],
        },
    )
    _dump(
        paths["panoptic_json"],
        {
            "info": info,
            "licenses": [],
            "images": images,
            "annotations": panoptic_anns,
            "categories": [dict(c, supercategory="shape" if c["isthing"] else "texture") for c in CATEGORIES],
        },
    )


def render_image(rng):
    """
    One image: ``(H, W, 3) uint8`` and its segments, a list of ``(category_id, bool mask)`` that partition the
    image (one segment per stuff class present, one per visible thing).
    """
    height, width = (int(v) for v in rng.integers(MIN_SIDE, MAX_SIDE + 1, size=2))
    image, stuff_segments, palette = _render_stuff(rng, height, width)
    things = _place_things(rng, height, width)

    segments = []
    covered = np.zeros((height, width), dtype=bool)
    for k in range(len(things) - 1, -1, -1):  # the last placed thing is on top
        category_id, mask = things[k]
        visible = mask & ~covered
        covered |= mask
        color = _distinct_color(rng, palette)
        palette.append(color)
        image[visible] = _shade(rng, visible, color)[visible]
        segments.append((category_id, visible))
    segments.reverse()
    for category_id, region in stuff_segments:
        region = region & ~covered
        if region.any():
            segments.append((category_id, region))

    noise = rng.normal(0.0, 4.0, size=image.shape)
    image = np.clip(image.astype(np.float64) + noise, 0, 255).astype(np.uint8)
    return image, segments


def _render_stuff(rng, height, width):
    """Two or three (sometimes one) texture bands with a wavy boundary."""
    num_regions = int(rng.choice([1, 2, 3], p=[0.2, 0.45, 0.35]))
    classes = rng.choice(len(STUFF), size=num_regions, replace=False)
    y, x = np.mgrid[0:height, 0:width].astype(np.float64)
    angle = rng.uniform(0, math.pi)
    along = x * math.cos(angle) + y * math.sin(angle)
    across = -x * math.sin(angle) + y * math.cos(angle)
    coord = along + rng.uniform(3, 12) * np.sin(across / rng.uniform(8, 30) + rng.uniform(0, 2 * math.pi))
    cuts = np.sort(rng.uniform(0.2, 0.8, size=num_regions - 1))
    edges = np.quantile(coord, cuts)
    band = np.searchsorted(edges, coord)

    image = np.zeros((height, width, 3), dtype=np.uint8)
    segments, palette = [], []
    for k, stuff_index in enumerate(classes):
        region = band == k
        name = STUFF[stuff_index]["name"]
        pattern, hue = _TEXTURES[name]
        dark, light = _two_colors(rng, hue)
        image[region] = np.where(pattern(rng, height, width)[..., None], dark, light)[region]
        palette += [dark, light]
        segments.append((STUFF[stuff_index]["id"], region))
    return image, segments, palette


def _two_colors(rng, hue):
    """A dark and a light colour around ``hue`` (degrees): each stuff class has its own family of colours."""
    h = ((hue + rng.uniform(-20, 20)) % 360) / 360
    s = rng.uniform(0.3, 0.7)
    dark = colorsys.hsv_to_rgb(h, s, rng.uniform(0.3, 0.5))
    light = colorsys.hsv_to_rgb(h, s * rng.uniform(0.5, 1.0), rng.uniform(0.65, 0.9))
    return (np.round(255 * np.array([dark, light]))).astype(np.int64)


def _stripes(rng, height, width):
    y, x = np.mgrid[0:height, 0:width]
    angle = rng.uniform(0, math.pi)
    phase = (x * math.cos(angle) + y * math.sin(angle)) / rng.uniform(6, 12)
    return np.sin(2 * math.pi * phase) > 0


def _checker(rng, height, width):
    y, x = np.mgrid[0:height, 0:width]
    angle = rng.uniform(0, math.pi / 2)
    cell = rng.uniform(5, 10)
    u = (x * math.cos(angle) + y * math.sin(angle)) / cell
    v = (-x * math.sin(angle) + y * math.cos(angle)) / cell
    return (np.floor(u) + np.floor(v)) % 2 == 0


def _speckle(rng, height, width):
    grain = rng.random((height // 2 + 1, width // 2 + 1)) < rng.uniform(0.3, 0.5)
    return np.kron(grain, np.ones((2, 2), dtype=bool))[:height, :width]


# Stuff class -> (texture pattern, hue of its colour family).
_TEXTURES = {"stripes": (_stripes, 110), "checker": (_checker, 15), "speckle": (_speckle, 220)}


def _unit_shape(name):
    """Vertices (N, 2) of a shape of circumradius 1 centred at 0."""
    if name == "cross":
        w = 0.3
        return np.array(
            [(-w, -1), (w, -1), (w, -w), (1, -w), (1, w), (w, w), (w, 1), (-w, 1), (-w, w), (-1, w), (-1, -w), (-w, -w)]
        )
    corners = {"disc": 48, "triangle": 3}[name]
    t = np.linspace(0, 2 * math.pi, corners, endpoint=False)
    return np.stack([np.cos(t), np.sin(t)], axis=1)


def _shape_polygon(name, radius, angle, center):
    rotation = np.array([[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]])
    return radius * _unit_shape(name) @ rotation.T + center


def _polygon_area(pts):
    x, y = pts[:, 0], pts[:, 1]
    return 0.5 * abs(np.dot(x, np.roll(y, 1)) - np.dot(y, np.roll(x, 1)))


def _place_things(rng, height, width):
    """Thing masks in drawing order; every one keeps enough visible area once all are drawn."""
    if rng.random() < EMPTY_IMAGE_PROB:
        return []
    target = int(rng.integers(1, MAX_THINGS + 1))
    side = min(height, width)
    min_radius, max_radius = MIN_RADIUS, MAX_RADIUS_FRACTION * side
    placed = []  # (category_id, mask, full_area, center, radius)
    for _ in range(target * 8):
        if len(placed) == target:
            break
        category = THINGS[int(rng.integers(len(THINGS)))]
        radius = math.exp(rng.uniform(math.log(min_radius), math.log(max_radius)))
        if placed and rng.random() < NEAR_PROB:
            _, _, _, other_center, other_radius = placed[int(rng.integers(len(placed)))]
            theta = rng.uniform(0, 2 * math.pi)
            distance = (radius + other_radius) * rng.uniform(0.7, 1.05)
            center = other_center + distance * np.array([math.cos(theta), math.sin(theta)])
        else:
            center = rng.uniform([0.1 * width, 0.1 * height], [0.9 * width, 0.9 * height])
        pts = _shape_polygon(category["name"], radius, rng.uniform(0, 2 * math.pi), center)
        mask = np.zeros((height, width), dtype=np.uint8)
        cv2.fillPoly(mask, [np.round(pts * 16).astype(np.int32)], 1, lineType=cv2.LINE_8, shift=4)
        mask = mask.astype(bool)
        full_area = _polygon_area(pts)
        if _keeps_enough(mask.sum(), full_area) and _all_stay_visible(placed, mask):
            placed.append((category["id"], mask, full_area, center, radius))
    return [(category_id, mask) for category_id, mask, *_ in placed]


def _all_stay_visible(placed, new_mask):
    """Whether every placed thing keeps enough visible area with ``new_mask`` drawn on top of all of them."""
    cover = new_mask.copy()
    for _, mask, full_area, _, _ in reversed(placed):
        if not _keeps_enough((mask & ~cover).sum(), full_area):
            return False
        cover |= mask
    return True


def _keeps_enough(visible_area, full_area):
    return visible_area >= max(MIN_VISIBLE_AREA, MIN_VISIBLE_FRACTION * full_area)


def _distinct_color(rng, palette):
    """A random colour far (L1 >= 120) from every colour already in the image, or the farthest of 50 tries."""
    best, best_distance = None, -1
    for _ in range(50):
        color = rng.integers(0, 256, size=3)
        distance = min((np.abs(color - p).sum() for p in palette), default=765)
        if distance >= 120:
            return color
        if distance > best_distance:
            best, best_distance = color, distance
    return best


def _shade(rng, mask, color):
    """The colour with a gentle linear brightness ramp across the image, so things are not perfectly flat."""
    height, width = mask.shape
    y, x = np.mgrid[0:height, 0:width]
    angle = rng.uniform(0, 2 * math.pi)
    ramp = (x * math.cos(angle) + y * math.sin(angle)) / max(height, width)
    shaded = color[None, None, :] * (1.0 + 0.15 * ramp[..., None])
    return np.clip(shaded, 0, 255).astype(np.uint8)


def _bbox(mask):
    ys, xs = np.nonzero(mask)
    return [int(xs.min()), int(ys.min()), int(xs.max() - xs.min() + 1), int(ys.max() - ys.min() + 1)]


def _dump(path, obj):
    with open(path, "w") as f:
        json.dump(obj, f)
