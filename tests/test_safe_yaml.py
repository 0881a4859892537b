"""Loading a config never executes code from it: arithmetic ``eval`` tags load, anything else is refused."""
import os
import subprocess
import sys

import pytest
import yaml
from detectron2.config import get_cfg
from detectron2.projects.deeplab import add_deeplab_config

from conftest import CONFIGS, FIXTURES, ROOT, make_cfg
from mask2former import add_maskformer2_config, get_maskformer2_cfg
from mask2former.safe_yaml import UnsafeConfigError, evaluate_expression
from test_config import _flatten

sys.path.insert(0, str(ROOT))
import train_net  # noqa: E402

# The original's files as it writes them (facebookresearch/Mask2Former, configs/): the Base files compute
# INPUT.MIN_SIZE_TRAIN with an eval tag, and the res640 Swin-L file overrides it with another.
_BASE = """MODEL:
  BACKBONE:
    FREEZE_AT: 0
    NAME: "build_resnet_backbone"
  WEIGHTS: "detectron2://ImageNetPretrained/torchvision/R-50.pkl"
  PIXEL_MEAN: [123.675, 116.280, 103.530]
  PIXEL_STD: [58.395, 57.120, 57.375]
  RESNETS:
    DEPTH: 50
    STEM_TYPE: "basic"  # not used
    STEM_OUT_CHANNELS: 64
    STRIDE_IN_1X1: False
    OUT_FEATURES: ["res2", "res3", "res4", "res5"]
    {norm}
    RES5_MULTI_GRID: [1, 1, 1]  # not used
DATASETS:
  TRAIN: ("{name}_train",)
  TEST: ("{name}_val",)
SOLVER:
  IMS_PER_BATCH: 16
  BASE_LR: 0.0001
  MAX_ITER: {max_iter}
  WARMUP_FACTOR: 1.0
  WARMUP_ITERS: 0
  WEIGHT_DECAY: 0.05
  OPTIMIZER: "ADAMW"
  LR_SCHEDULER_NAME: "WarmupPolyLR"
  BACKBONE_MULTIPLIER: 0.1
  CLIP_GRADIENTS:
    ENABLED: True
    CLIP_TYPE: "full_model"
    CLIP_VALUE: 0.01
    NORM_TYPE: 2.0
  AMP:
    ENABLED: True
INPUT:
  MIN_SIZE_TRAIN: !!python/object/apply:eval ["[int(x * 0.1 * {scale}) for x in range(5, 21)]"]
  MIN_SIZE_TRAIN_SAMPLING: "choice"
  MIN_SIZE_TEST: {min_test}
  MAX_SIZE_TRAIN: {max_train}
  MAX_SIZE_TEST: 2048
  CROP:
    ENABLED: True
    TYPE: "absolute"
    SIZE: {crop}
    SINGLE_CATEGORY_MAX_AREA: 1.0
  COLOR_AUG_SSD: True
  SIZE_DIVISIBILITY: {divisibility}
  FORMAT: "RGB"
  DATASET_MAPPER_NAME: "mask_former_semantic"
TEST:
{test}
DATALOADER:
  FILTER_EMPTY_ANNOTATIONS: True
  NUM_WORKERS: {workers}
VERSION: 2
"""
_R50 = """_BASE_: {base}
MODEL:
  META_ARCHITECTURE: "MaskFormer"
  SEM_SEG_HEAD:
    NAME: "MaskFormerHead"
    IGNORE_VALUE: {ignore}
    NUM_CLASSES: {classes}
    LOSS_WEIGHT: 1.0
    CONVS_DIM: 256
    MASK_DIM: 256
    NORM: "GN"
    # pixel decoder
    PIXEL_DECODER_NAME: "MSDeformAttnPixelDecoder"
    IN_FEATURES: ["res2", "res3", "res4", "res5"]
    DEFORMABLE_TRANSFORMER_ENCODER_IN_FEATURES: ["res3", "res4", "res5"]
    COMMON_STRIDE: 4
    TRANSFORMER_ENC_LAYERS: 6
  MASK_FORMER:
    TRANSFORMER_DECODER_NAME: "MultiScaleMaskedTransformerDecoder"
    TRANSFORMER_IN_FEATURE: "multi_scale_pixel_decoder"
    DEEP_SUPERVISION: True
    NO_OBJECT_WEIGHT: 0.1
    CLASS_WEIGHT: 2.0
    MASK_WEIGHT: 5.0
    DICE_WEIGHT: 5.0
    HIDDEN_DIM: 256
    NUM_OBJECT_QUERIES: 100
    NHEADS: 8
    DROPOUT: 0.0
    DIM_FEEDFORWARD: 2048
    ENC_LAYERS: 0
    PRE_NORM: False
    ENFORCE_INPUT_PROJ: False
    SIZE_DIVISIBILITY: 32
    DEC_LAYERS: 10  # 9 decoder layers, add one for the loss on learnable query
    TRAIN_NUM_POINTS: 12544
    OVERSAMPLE_RATIO: 3.0
    IMPORTANCE_SAMPLE_RATIO: 0.75
    TEST:
      SEMANTIC_ON: True
      INSTANCE_ON: False
      PANOPTIC_ON: False
      OVERLAP_THRESHOLD: 0.8
      OBJECT_MASK_THRESHOLD: {object_threshold}
"""
_SWIN_L_RES640 = """_BASE_: ../maskformer2_R50_bs16_160k.yaml
MODEL:
  BACKBONE:
    NAME: "D2SwinTransformer"
  SWIN:
    EMBED_DIM: 192
    DEPTHS: [2, 2, 18, 2]
    NUM_HEADS: [6, 12, 24, 48]
    WINDOW_SIZE: 12
    APE: False
    DROP_PATH_RATE: 0.3
    PATCH_NORM: True
    PRETRAIN_IMG_SIZE: 384
  WEIGHTS: "swin_large_patch4_window12_384_22k.pkl"
  PIXEL_MEAN: [123.675, 116.280, 103.530]
  PIXEL_STD: [58.395, 57.120, 57.375]
INPUT:
  MIN_SIZE_TRAIN: !!python/object/apply:eval ["[int(x * 0.1 * 640) for x in range(5, 21)]"]
  MIN_SIZE_TRAIN_SAMPLING: "choice"
  MIN_SIZE_TEST: 640
  MAX_SIZE_TRAIN: 2560
  MAX_SIZE_TEST: 2560
  CROP:
    ENABLED: True
    TYPE: "absolute"
    SIZE: (640, 640)
    SINGLE_CATEGORY_MAX_AREA: 1.0
  COLOR_AUG_SSD: True
  SIZE_DIVISIBILITY: 640  # used in dataset mapper
  FORMAT: "RGB"
TEST:
  EVAL_PERIOD: 5000
  AUG:
    ENABLED: False
    MIN_SIZES: [320, 480, 640, 800, 960, 1120]
    MAX_SIZE: 4480
    FLIP: True
"""
_AUG = (
    "  EVAL_PERIOD: 5000\n  AUG:\n    ENABLED: False\n    MIN_SIZES: {sizes}\n    MAX_SIZE: {max_size}\n    FLIP: True"
)
ORIGINAL_FOLDERS = {
    "ade20k/semantic-segmentation": (
        "Base-ADE20K-SemanticSegmentation.yaml",
        "maskformer2_R50_bs16_160k.yaml",
        dict(norm='# NORM: "SyncBN"', name="ade20k_sem_seg", max_iter=160000, scale=512, min_test=512,
             max_train=2048, crop="(512, 512)", divisibility="512  # used in dataset mapper", workers=4,
             test=_AUG.format(sizes="[256, 384, 512, 640, 768, 896]", max_size=3584)),
        dict(ignore=255, classes=150, object_threshold=0.8),
    ),
    "cityscapes/semantic-segmentation": (
        "Base-Cityscapes-SemanticSegmentation.yaml",
        "maskformer2_R50_bs16_90k.yaml",
        dict(norm='NORM: "SyncBN"  # use syncbn for cityscapes dataset', name="cityscapes_fine_sem_seg",
             max_iter=90000, scale=1024, min_test=1024, max_train=4096, crop="(512, 1024)", divisibility=-1,
             workers=4, test=_AUG.format(sizes="[512, 768, 1024, 1280, 1536, 1792]", max_size=4096)),
        dict(ignore=255, classes=19, object_threshold=0.8),
    ),
    "mapillary-vistas/semantic-segmentation": (
        "Base-MapillaryVistas-SemanticSegmentation.yaml",
        "maskformer2_R50_bs16_300k.yaml",
        dict(norm='# NORM: "SyncBN"', name="mapillary_vistas_sem_seg", max_iter=300000, scale=2048,
             min_test=2048, max_train=8192, crop="(1024, 1024)", divisibility="1024  # used in dataset mapper",
             workers=10, test="  EVAL_PERIOD: 0"),
        dict(ignore=65, classes=65, object_threshold=0.0),
    ),
}
SWIN_L_RES640 = "ade20k/semantic-segmentation/swin/maskformer2_swin_large_IN21k_384_bs16_160k_res640.yaml"


@pytest.fixture(scope="module")
def original_tree(tmp_path_factory):
    """The original's Base, R50 and (ADE20K) Swin-L res640 files, eval tags included, in a temporary folder."""
    root = tmp_path_factory.mktemp("original_configs")
    for folder, (base, r50, base_values, r50_values) in ORIGINAL_FOLDERS.items():
        (root / folder / "swin").mkdir(parents=True)
        (root / folder / base).write_text(_BASE.format(**base_values))
        (root / folder / r50).write_text(_R50.format(base=base, **r50_values))
    (root / SWIN_L_RES640).write_text(_SWIN_L_RES640)
    return root


def _merged(path, **kwargs):
    return _flatten(yaml.safe_load(make_cfg(path, **kwargs).dump()))


@pytest.mark.parametrize(
    "config", [f"{folder}/{r50}" for folder, (_, r50, *_) in ORIGINAL_FOLDERS.items()] + [SWIN_L_RES640]
)
def test_original_files_with_eval_tags_load_to_our_values(original_tree, config):
    assert "!!python/object/apply:eval" in (original_tree / config).read_text() or "swin" not in config
    theirs = _merged(original_tree / config)
    assert theirs == _merged(CONFIGS / config)
    expected = _flatten(yaml.safe_load((FIXTURES / "original_configs" / config).read_text()))
    assert theirs["INPUT.MIN_SIZE_TRAIN"] == expected["INPUT.MIN_SIZE_TRAIN"]


R50 = CONFIGS / "coco/panoptic-segmentation/maskformer2_R50_bs16_50ep.yaml"


def _harmful(tmp_path, tag_line, name="user.yaml", base=R50):
    """A user config over ``base`` whose line 3 is ``tag_line`` (which would create ``tmp_path/pwned``)."""
    path = tmp_path / name
    path.write_text(f"_BASE_: {base}\nSOLVER:\n  {tag_line}\n")
    return path


SYSTEM = 'MAX_ITER: !!python/object/apply:os.system ["touch {marker}"]'


def test_harmful_tag_is_refused_before_it_runs(tmp_path):
    marker = tmp_path / "pwned"
    path = _harmful(tmp_path, SYSTEM.format(marker=marker))
    with pytest.raises(UnsafeConfigError) as error:
        get_maskformer2_cfg(path)
    message = str(error.value)
    assert str(path) in message and "line 3" in message and "python/object/apply:os.system" in message
    assert "--trust-config" in message
    assert not marker.exists()


def test_scripts_written_for_the_original_are_protected(tmp_path):
    """detectron2's own get_cfg + merge_from_file (the original's train_net) loads through the same loader."""
    marker = tmp_path / "pwned"
    base = _harmful(tmp_path, SYSTEM.format(marker=marker), name="base.yaml")
    user = tmp_path / "user.yaml"
    user.write_text(f"_BASE_: {base.name}\nSOLVER:\n  BASE_LR: 0.1\n")
    cfg = get_cfg()
    add_deeplab_config(cfg)
    add_maskformer2_config(cfg)
    with pytest.raises(UnsafeConfigError, match=f"{base}, line 3"):
        cfg.merge_from_file(str(user))  # detectron2's default allow_unsafe=True does not bypass it
    assert not marker.exists()


@pytest.mark.parametrize(
    "expression",
    [
        "__import__('os').system('touch {marker}')",
        "[open('{marker}', 'w') for x in range(1)]",
        "(lambda: 0)()",
        "[x.__class__ for x in range(2)]",
        "list(range(10 ** 9))",
        "2 ** 10 ** 10",
        "((10 ** 60) ** 60) ** 60",
        "[x for x in range(10 ** 5) for y in range(10 ** 5)]",
        "'a' * 3",
    ],
)
def test_eval_tag_beyond_arithmetic_is_refused(tmp_path, expression):
    marker = tmp_path / "pwned"
    text = expression.format(marker=marker).replace('"', '\\"')
    path = _harmful(tmp_path, f'MAX_ITER: !!python/object/apply:eval ["{text}"]')
    with pytest.raises(UnsafeConfigError, match="line 3: tag 'tag:yaml.org,2002:python/object/apply:eval'"):
        get_maskformer2_cfg(path)
    assert not marker.exists()


def test_arithmetic_expressions():
    assert evaluate_expression("[int(x * 0.1 * 640) for x in range(5, 21)]")[:3] == [320, 384, 448]
    assert evaluate_expression("(2 ** 3 - 1, -4 // 3, 7 % 4, max(1, 2.5), len([1, 2]))") == (7, -2, 3, 2.5, 2)
    assert evaluate_expression("[[x * y for y in range(2)] for x in range(1, 3)]") == [[0, 1], [0, 2]]
    with pytest.raises(ValueError, match="unknown name 'y'"):
        evaluate_expression("[y for x in range(2)]")


def test_trusted_config_runs_its_code(tmp_path):
    marker = tmp_path / "pwned"
    path = _harmful(tmp_path, SYSTEM.format(marker=marker))
    cfg = get_maskformer2_cfg(path, trust_config=True)
    assert marker.exists() and cfg.SOLVER.MAX_ITER == 0  # os.system's exit status
    marker.unlink()
    with pytest.raises(UnsafeConfigError):  # trust does not outlive the call
        get_maskformer2_cfg(path)
    assert not marker.exists()


def _train_net(*args):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run(
        [sys.executable, "train_net.py", *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300
    )


def test_train_net_refuses_harmful_config_and_trusts_on_request(tmp_path):
    marker = tmp_path / "pwned"
    path = _harmful(tmp_path, SYSTEM.format(marker=marker))
    result = _train_net("--config-file", str(path), "OUTPUT_DIR", str(tmp_path / "out"))
    assert result.returncode != 0
    assert "UnsafeConfigError" in result.stderr and f"{path}, line 3" in result.stderr
    assert not marker.exists()

    # The same command line with --trust-config lets the tag run (setup only: the config is all it needs).
    args = train_net.default_argument_parser().parse_args(
        ["--trust-config", "--config-file", str(path), "OUTPUT_DIR", str(tmp_path / "out")]
    )
    assert train_net.setup(args).SOLVER.MAX_ITER == 0 and marker.exists()
