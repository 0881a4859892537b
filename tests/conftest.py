"""Shared test helpers: where the read-only fixtures live and how to build a config the way users do."""
import importlib.util
import os
import subprocess
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]


def _find_fixtures():
    """
    $MASK2FORMER_FIXTURES, else the first ``shared/fixtures`` in or above this repository, or in or above the
    local repository it was cloned from (a clone in a temporary folder still finds the workspace's fixtures).
    """
    if os.environ.get("MASK2FORMER_FIXTURES"):
        return Path(os.environ["MASK2FORMER_FIXTURES"])
    origin = subprocess.run(
        ["git", "-C", str(ROOT), "config", "--get", "remote.origin.url"], capture_output=True, text=True
    ).stdout.strip()
    roots = [ROOT] + ([Path(origin).resolve()] if origin and "://" not in origin and Path(origin).is_dir() else [])
    for folder in (f for root in roots for f in (root, *root.parents)):
        if (folder / "shared" / "fixtures").is_dir():
            return folder / "shared" / "fixtures"
    return ROOT.parent / "shared" / "fixtures"


FIXTURES = _find_fixtures()
CONFIGS = ROOT / "configs"
# The original's zoo configs, as paths relative to configs/ (e.g. "ade20k/semantic-segmentation/swin/x.yaml"):
# one per merged config in the fixtures, so a new fixture is tested automatically.
ZOO_CONFIGS = sorted(
    str(p.relative_to(FIXTURES / "original_configs")) for p in (FIXTURES / "original_configs").rglob("*.yaml")
)
R50 = CONFIGS / "coco/panoptic-segmentation/maskformer2_R50_bs16_50ep.yaml"
# Overrides of R50 for a model small enough to train in seconds on CPU, for the 6 classes of the toy dataset.
TINY_MODEL = [
    "MODEL.RESNETS.STEM_OUT_CHANNELS 16",
    "MODEL.RESNETS.RES2_OUT_CHANNELS 16",
    "MODEL.RESNETS.WIDTH_PER_GROUP 4",
    "MODEL.SEM_SEG_HEAD.CONVS_DIM 32",
    "MODEL.SEM_SEG_HEAD.MASK_DIM 32",
    "MODEL.SEM_SEG_HEAD.TRANSFORMER_ENC_LAYERS 1",
    "MODEL.SEM_SEG_HEAD.NUM_CLASSES 6",
    "MODEL.MASK_FORMER.HIDDEN_DIM 32",
    "MODEL.MASK_FORMER.NHEADS 4",
    "MODEL.MASK_FORMER.DIM_FEEDFORWARD 64",
    "MODEL.WEIGHTS ''",
    "MODEL.DEVICE cpu",
]


def load_script(path):
    """A script (tools/*.py, datasets/*.py) imported as a module, to call its functions."""
    spec = importlib.util.spec_from_file_location(Path(path).stem.replace("-", "_"), path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def split_overrides(overrides):
    """``KEY VALUE`` override strings as the flat list a command line takes."""
    return [part for item in overrides for part in item.split(" ", 1)]


def make_cfg(config_file, overrides=()):
    """The config users get from ``config_file`` and ``KEY VALUE`` override strings."""
    from mask2former import get_maskformer2_cfg

    return get_maskformer2_cfg(config_file, split_overrides(overrides))


@pytest.fixture(scope="session")
def fixtures_dir():
    if not FIXTURES.is_dir():
        pytest.fail(f"shared fixtures not found at {FIXTURES}: clone next to shared/, or set MASK2FORMER_FIXTURES")
    return FIXTURES


def assert_same_state(a, b, path=""):
    """``a`` and ``b`` (nested state dicts) hold the same types, keys, dtypes and values."""
    assert type(a) is type(b) or (torch.is_tensor(a) and torch.is_tensor(b)), path
    if isinstance(a, dict):
        assert a.keys() == b.keys(), path
        for key in a:
            assert_same_state(a[key], b[key], f"{path}.{key}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b)):
            assert_same_state(x, y, f"{path}[{i}]")
    elif torch.is_tensor(a):
        assert a.dtype == b.dtype and torch.equal(a, b), path
    else:
        assert a == b, path
