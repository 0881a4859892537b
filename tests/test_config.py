"""Our zoo YAMLs, merged over the defaults, equal the original's fully merged configs on every key."""
import pytest
import yaml
from detectron2.config import get_cfg
from detectron2.projects.deeplab import add_deeplab_config

from conftest import CONFIGS, FIXTURES, make_cfg
from mask2former import add_maskformer2_config

ZOO = {
    "maskformer2_R50_bs16_50ep": "coco/panoptic-segmentation/maskformer2_R50_bs16_50ep.yaml",
    "maskformer2_swin_tiny_bs16_50ep": "coco/panoptic-segmentation/swin/maskformer2_swin_tiny_bs16_50ep.yaml",
    "maskformer2_swin_small_bs16_50ep": "coco/panoptic-segmentation/swin/maskformer2_swin_small_bs16_50ep.yaml",
    "maskformer2_swin_base_384_bs16_50ep": "coco/panoptic-segmentation/swin/maskformer2_swin_base_384_bs16_50ep.yaml",
    "maskformer2_swin_base_IN21k_384_bs16_50ep": (
        "coco/panoptic-segmentation/swin/maskformer2_swin_base_IN21k_384_bs16_50ep.yaml"
    ),
    "maskformer2_swin_large_IN21k_384_bs16_100ep": (
        "coco/panoptic-segmentation/swin/maskformer2_swin_large_IN21k_384_bs16_100ep.yaml"
    ),
}

# Keys we add on top of the original's, each with a default that keeps the original's behaviour.
ADDED_KEYS = {
    "MODEL.MASK_FORMER.TEST.AUTOCAST_DTYPE": "",  # the fast inference path (off)
    "MODEL.WEIGHTS_MD5_CHECK": True,  # checkpoint integrity (on)
    "INPUT.LSJ_DROP_EMPTY_TARGETS": False,  # coco_panoptic_lsj keeps empty targets (the original's)
    "DATALOADER.SKIP_UNREADABLE_SAMPLES": False,  # an unreadable training file stops training
    "DATALOADER.MAX_UNREADABLE_SAMPLES": 100,  # with skipping on, the limit
}


def _flatten(tree, prefix=""):
    out = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            out.update(_flatten(value, f"{prefix}{key}."))
        else:
            out[prefix + key] = list(value) if isinstance(value, tuple) else value
    return out


@pytest.mark.parametrize("stem", sorted(ZOO))
def test_merged_config_equals_zoo(stem):
    ours = _flatten(yaml.safe_load(make_cfg(CONFIGS / ZOO[stem]).dump()))
    expected = _flatten(yaml.safe_load((FIXTURES / "zoo_configs" / f"{stem}.yaml").read_text()))
    assert {k: ours[k] for k in ADDED_KEYS if k in ours} == ADDED_KEYS, "an added key is missing or not its default"
    ours = {k: v for k, v in ours.items() if k not in ADDED_KEYS}
    assert sorted(ours) == sorted(expected), "key sets differ"
    differing = {k: (ours[k], expected[k]) for k in expected if ours[k] != expected[k]}
    assert not differing


def test_unknown_key_in_user_yaml_is_an_error(tmp_path):
    user = tmp_path / "user.yaml"
    user.write_text(f"_BASE_: {CONFIGS / ZOO['maskformer2_R50_bs16_50ep']}\nMODEL:\n  MASK_FORMER:\n    NUM_QUERIES: 50\n")
    cfg = get_cfg()
    add_deeplab_config(cfg)
    add_maskformer2_config(cfg)
    with pytest.raises(KeyError, match="NUM_QUERIES"):
        cfg.merge_from_file(str(user))
