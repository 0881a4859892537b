"""Shared test helpers: where the read-only fixtures live and how to build a config the way users do."""
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = ROOT.parent / "shared" / "fixtures"
CONFIGS = ROOT / "configs"


def make_cfg(config_file, overrides=()):
    """get_cfg() + DeepLab keys + Mask2Former keys, then the YAML, then ``KEY VALUE`` override strings."""
    from detectron2.config import get_cfg
    from detectron2.projects.deeplab import add_deeplab_config

    from mask2former import add_maskformer2_config

    cfg = get_cfg()
    add_deeplab_config(cfg)
    add_maskformer2_config(cfg)
    cfg.merge_from_file(str(config_file))
    opts = []
    for item in overrides:
        key, value = item.split(" ", 1)
        opts += [key, value]
    cfg.merge_from_list(opts)
    return cfg


@pytest.fixture(scope="session")
def fixtures_dir():
    if not FIXTURES.is_dir():
        pytest.fail(f"shared fixtures not found at {FIXTURES}: the repository must sit next to shared/")
    return FIXTURES
