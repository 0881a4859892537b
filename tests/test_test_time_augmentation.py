"""SemanticSegmentorWithTTA averages what it should: the model's sem_seg over the resized and flipped versions."""
import numpy as np
import pytest
import torch
from detectron2.modeling import build_model
from PIL import Image

from conftest import R50, TINY_MODEL, make_cfg
from mask2former import SemanticSegmentorWithTTA

SEMANTIC_ONLY = [
    "MODEL.MASK_FORMER.TEST.SEMANTIC_ON True",
    "MODEL.MASK_FORMER.TEST.INSTANCE_ON False",
    "MODEL.MASK_FORMER.TEST.PANOPTIC_ON False",
    "MODEL.MASK_FORMER.DEC_LAYERS 2",
    "MODEL.MASK_FORMER.NUM_OBJECT_QUERIES 10",
]
HEIGHT, WIDTH = 40, 56


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return build_model(make_cfg(R50, TINY_MODEL + SEMANTIC_ONLY)).eval()


@pytest.fixture(scope="module")
def image():
    return torch.randint(0, 256, (3, HEIGHT, WIDTH), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))


def _tta(model, image, min_sizes, flip, **kwargs):
    aug = [f"TEST.AUG.MIN_SIZES {tuple(min_sizes)}", "TEST.AUG.MAX_SIZE 1000", f"TEST.AUG.FLIP {flip}"]
    cfg = make_cfg(R50, TINY_MODEL + SEMANTIC_ONLY + aug)
    with torch.no_grad():
        (result,) = SemanticSegmentorWithTTA(cfg, model, **kwargs)([{"image": image, "height": HEIGHT, "width": WIDTH}])
    assert set(result) == {"sem_seg"}
    return result["sem_seg"]


def _plain(model, image):
    with torch.no_grad():
        return model([{"image": image, "height": HEIGHT, "width": WIDTH}])[0]["sem_seg"]


def test_one_scale_without_flip_is_the_plain_model(model, image):
    torch.testing.assert_close(_tta(model, image, [HEIGHT], False), _plain(model, image))


def test_flip_averages_with_the_flipped_back_prediction_of_the_flipped_image(model, image):
    expected = (_plain(model, image) + _plain(model, image.flip(-1)).flip(-1)) / 2
    torch.testing.assert_close(_tta(model, image, [HEIGHT], True), expected)


def test_scales_average_the_predictions_at_each_short_side(model, image):
    # Short side 80: the image resized bilinearly to 80 x 112; its prediction comes back at the input's size.
    resized = np.asarray(Image.fromarray(image.permute(1, 2, 0).numpy()).resize((112, 80), Image.BILINEAR))
    resized = torch.from_numpy(resized.copy()).permute(2, 0, 1)
    expected = (_plain(model, image) + _plain(model, resized)) / 2
    torch.testing.assert_close(_tta(model, image, [HEIGHT, 80], False), expected)


def test_needs_semantic_outputs(model):
    cfg = make_cfg(R50, TINY_MODEL + ["MODEL.MASK_FORMER.TEST.SEMANTIC_ON False"])
    with pytest.raises(ValueError, match="SEMANTIC_ON True"):
        SemanticSegmentorWithTTA(cfg, model)
