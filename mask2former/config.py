"""Config keys of Mask2Former, added on top of detectron2's defaults and DeepLab's."""
import contextlib

from detectron2.config import CfgNode as CN
from detectron2.config import get_cfg
from detectron2.projects.deeplab import add_deeplab_config

from . import safe_yaml

# Every config file loaded once mask2former is imported, by us or by scripts written for the original
# (cfg.merge_from_file), goes through the loader that never runs code from the file.
safe_yaml.install()


def get_maskformer2_cfg(config_file, opts=(), trust_config=False):
    """
    The config of a Mask2Former YAML as every entry point builds it: detectron2's defaults, DeepLab's and
    Mask2Former's keys, then ``config_file`` (with its ``_BASE_`` chain), then ``opts`` (``[KEY, VALUE, ...]``).
    Not frozen. Python tags in the files other than arithmetic ``eval`` are refused unless ``trust_config``
    (then they run, as in detectron2).
    """
    cfg = get_cfg()
    add_deeplab_config(cfg)
    add_maskformer2_config(cfg)
    with safe_yaml.trusted_config() if trust_config else contextlib.nullcontext():
        cfg.merge_from_file(str(config_file))
    cfg.merge_from_list(list(opts))
    return cfg


def add_maskformer2_config(cfg):
    """
    Add every Mask2Former key, with the original's default, to ``cfg``.

    Call it after ``detectron2.projects.deeplab.add_deeplab_config`` so that existing user YAMLs,
    which may set any key of either, load unchanged.
    """
    # Data
    cfg.INPUT.DATASET_MAPPER_NAME = "mask_former_semantic"
    cfg.INPUT.COLOR_AUG_SSD = False
    cfg.INPUT.CROP.SINGLE_CATEGORY_MAX_AREA = 1.0
    cfg.INPUT.SIZE_DIVISIBILITY = -1
    # Large-scale jitter (coco_panoptic_lsj / coco_instance_lsj mappers)
    cfg.INPUT.IMAGE_SIZE = 1024
    cfg.INPUT.MIN_SCALE = 0.1
    cfg.INPUT.MAX_SCALE = 2.0

    # Optimizer
    cfg.SOLVER.WEIGHT_DECAY_EMBED = 0.0
    cfg.SOLVER.OPTIMIZER = "ADAMW"
    cfg.SOLVER.BACKBONE_MULTIPLIER = 0.1

    # Model
    cfg.MODEL.MASK_FORMER = CN()
    mf = cfg.MODEL.MASK_FORMER
    mf.DEEP_SUPERVISION = True
    mf.NO_OBJECT_WEIGHT = 0.1
    mf.CLASS_WEIGHT = 1.0
    mf.DICE_WEIGHT = 1.0
    mf.MASK_WEIGHT = 20.0
    mf.NHEADS = 8
    mf.DROPOUT = 0.1
    mf.DIM_FEEDFORWARD = 2048
    mf.DEC_LAYERS = 6
    mf.PRE_NORM = False
    mf.HIDDEN_DIM = 256
    mf.NUM_OBJECT_QUERIES = 100
    mf.TRANSFORMER_IN_FEATURE = "res5"
    mf.ENFORCE_INPUT_PROJ = False
    mf.TRANSFORMER_DECODER_NAME = "MultiScaleMaskedTransformerDecoder"
    # Images are padded to a multiple of this before the backbone.
    mf.SIZE_DIVISIBILITY = 32
    # Point-sampled mask losses and matching costs
    mf.TRAIN_NUM_POINTS = 112 * 112
    mf.OVERSAMPLE_RATIO = 3.0
    mf.IMPORTANCE_SAMPLE_RATIO = 0.75

    mf.TEST = CN()
    mf.TEST.SEMANTIC_ON = True
    mf.TEST.INSTANCE_ON = False
    mf.TEST.PANOPTIC_ON = False
    mf.TEST.OBJECT_MASK_THRESHOLD = 0.0
    mf.TEST.OVERLAP_THRESHOLD = 0.0
    mf.TEST.SEM_SEG_POSTPROCESSING_BEFORE_INFERENCE = False
    # Not in the original: the fast inference path. "" or "float32" = off (default); "bfloat16" or "float16" run the
    # backbone and head under torch.autocast with that dtype (post-processing stays float32).
    mf.TEST.AUTOCAST_DTYPE = ""
    # Not in the original: check checkpoint files named *_<6 hex>.pkl/.pth against that md5 prefix before
    # loading them. False for a file you renamed yourself ($MASK2FORMER_MD5_CHECK=0 also turns it off).
    cfg.MODEL.WEIGHTS_MD5_CHECK = True

    # Pixel decoder
    cfg.MODEL.SEM_SEG_HEAD.MASK_DIM = 256
    cfg.MODEL.SEM_SEG_HEAD.TRANSFORMER_ENC_LAYERS = 0
    cfg.MODEL.SEM_SEG_HEAD.PIXEL_DECODER_NAME = "BasePixelDecoder"
    cfg.MODEL.SEM_SEG_HEAD.DEFORMABLE_TRANSFORMER_ENCODER_IN_FEATURES = ["res3", "res4", "res5"]
    cfg.MODEL.SEM_SEG_HEAD.DEFORMABLE_TRANSFORMER_ENCODER_N_POINTS = 4

    # Kept only for compatibility: the original defines these keys and its YAMLs set them, but nothing reads
    # them (Mask2Former's decoder has no transformer encoder; the deformable encoder uses MASK_FORMER.NHEADS).
    mf.ENC_LAYERS = 0
    cfg.MODEL.SEM_SEG_HEAD.DEFORMABLE_TRANSFORMER_ENCODER_N_HEADS = 8

    # Swin backbone
    cfg.MODEL.SWIN = CN()
    sw = cfg.MODEL.SWIN
    sw.PRETRAIN_IMG_SIZE = 224
    sw.PATCH_SIZE = 4
    sw.EMBED_DIM = 96
    sw.DEPTHS = [2, 2, 6, 2]
    sw.NUM_HEADS = [3, 6, 12, 24]
    sw.WINDOW_SIZE = 7
    sw.MLP_RATIO = 4.0
    sw.QKV_BIAS = True
    sw.QK_SCALE = None
    sw.DROP_RATE = 0.0
    sw.ATTN_DROP_RATE = 0.0
    sw.DROP_PATH_RATE = 0.3
    sw.APE = False
    sw.PATCH_NORM = True
    sw.OUT_FEATURES = ["res2", "res3", "res4", "res5"]
    sw.USE_CHECKPOINT = False

    # Not in the original: training data.
    # coco_panoptic_lsj: True drops the segments a crop leaves out of the targets and skips images without any
    # non-crowd segment; False (the original's behaviour) keeps them as empty masks / pure negatives.
    cfg.INPUT.LSJ_DROP_EMPTY_TARGETS = False
    # True: a training sample whose image or label file cannot be read is skipped with a warning (counted in
    # metrics.json as data/unreadable_files_skipped) instead of stopping training; training still stops once more
    # than MAX_UNREADABLE_SAMPLES distinct files were skipped.
    cfg.DATALOADER.SKIP_UNREADABLE_SAMPLES = False
    cfg.DATALOADER.MAX_UNREADABLE_SAMPLES = 100
