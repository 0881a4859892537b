"""Reading arbitrary user images, running a model on one image, and drawing its outputs or the ground truth."""
import numpy as np
import torch
from detectron2.data import MetadataCatalog
from detectron2.data import transforms as T
from detectron2.modeling import build_model
from detectron2.utils.visualizer import ColorMode, Visualizer
from panopticapi.utils import rgb2id
from PIL import Image, ImageOps, UnidentifiedImageError

from .checkpoint import SafeCheckpointer

MODES = ("panoptic", "instance", "semantic")


def read_image(path):
    """
    An image file as RGB uint8 (H, W, 3), upright: EXIF orientation applied, grayscale and 16-bit images
    expanded to RGB, transparency composited over white.
    """
    try:
        with Image.open(path) as image:
            image = ImageOps.exif_transpose(image)
            image.load()
    except (UnidentifiedImageError, OSError, SyntaxError) as e:
        raise ValueError(f"cannot read image {path}: {e}; give a file PIL can open (JPEG, PNG, BMP, TIFF, ...)") from e
    if image.mode in ("I", "I;16", "I;16B", "I;16L", "F"):
        values = np.asarray(image, dtype=np.float64)
        peak = 65535.0 if image.mode.startswith("I;16") or values.max() > 255 else 255.0
        gray = np.clip(values / peak * 255.0, 0, 255).astype(np.uint8)
        return np.repeat(gray[..., None], 3, axis=2)
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        image = image.convert("RGBA")
        white = Image.new("RGBA", image.size, (255, 255, 255, 255))
        image = Image.alpha_composite(white, image)
    return np.asarray(image.convert("RGB"))


class Predictor:
    """
    A model built from ``cfg`` with ``cfg.MODEL.WEIGHTS``, applied to single RGB images: resized as at test time
    (shortest edge ``INPUT.MIN_SIZE_TEST``, at most ``INPUT.MAX_SIZE_TEST``), outputs at the original size.
    """

    def __init__(self, cfg, model=None):
        """``model``: called instead of the model of ``cfg.MODEL.WEIGHTS``, e.g. an ``ExportedPredictor``."""
        self.cfg = cfg.clone()
        if model is None:
            model = build_model(self.cfg)
            model.eval()
            SafeCheckpointer(model, verify_md5=cfg.MODEL.WEIGHTS_MD5_CHECK).load(cfg.MODEL.WEIGHTS)
        self.model = model
        self.min_size, self.max_size = cfg.INPUT.MIN_SIZE_TEST, cfg.INPUT.MAX_SIZE_TEST
        if cfg.INPUT.FORMAT not in ("RGB", "BGR"):
            raise ValueError(f"INPUT.FORMAT={cfg.INPUT.FORMAT!r} is not supported; use RGB or BGR")
        self.input_format = cfg.INPUT.FORMAT

    @torch.no_grad()
    def __call__(self, rgb):
        height, width = rgb.shape[:2]
        new_height, new_width = T.ResizeShortestEdge.get_output_shape(height, width, self.min_size, self.max_size)
        # The long-side limit can shrink a very thin image (a 20000x64 panorama) to 0 pixels: keep at least 1.
        image = T.ResizeTransform(height, width, max(new_height, 1), max(new_width, 1)).apply_image(rgb)
        if self.input_format == "BGR":
            image = image[:, :, ::-1]
        tensor = torch.as_tensor(np.ascontiguousarray(image.transpose(2, 0, 1)))
        return self.model([{"image": tensor, "height": height, "width": width}])[0]


def _visualizer(rgb, metadata):
    # Small images are drawn enlarged so that labels stay legible.
    scale = max(1.0, 480.0 / max(rgb.shape[:2]))
    return Visualizer(rgb, metadata, scale=scale, instance_mode=ColorMode.IMAGE)


def draw_prediction(rgb, outputs, metadata, mode="panoptic", score_threshold=0.5):
    """The image with one kind of model output drawn over it, as RGB uint8."""
    if mode not in MODES:
        raise ValueError(f"mode={mode!r}; choose one of {MODES}")
    key = {"panoptic": "panoptic_seg", "instance": "instances", "semantic": "sem_seg"}[mode]
    if key not in outputs:
        raise ValueError(f"the model returned no {key!r}: turn on MODEL.MASK_FORMER.TEST.{mode.upper()}_ON")
    vis = _visualizer(rgb, metadata)
    if mode == "panoptic":
        panoptic_seg, segments_info = outputs["panoptic_seg"]
        out = vis.draw_panoptic_seg(panoptic_seg.cpu(), segments_info)
    elif mode == "instance":
        instances = outputs["instances"].to("cpu")
        out = vis.draw_instance_predictions(instances[instances.scores >= score_threshold])
    else:
        out = vis.draw_sem_seg(outputs["sem_seg"].argmax(0).cpu())
    return out.get_image()


def draw_ground_truth(rgb, dataset_dict, metadata):
    """
    The annotation of a detectron2 dataset dict drawn: panoptic (``pan_seg_file_name``, ``segments_info``), else
    semantic (``sem_seg_file_name``), else instances (``annotations``).
    """
    vis = _visualizer(rgb, metadata)
    if "pan_seg_file_name" in dataset_dict:
        ids = rgb2id(np.asarray(Image.open(dataset_dict["pan_seg_file_name"]).convert("RGB")))
        return vis.draw_panoptic_seg(torch.as_tensor(ids), dataset_dict["segments_info"]).get_image()
    if "sem_seg_file_name" in dataset_dict:
        with Image.open(dataset_dict["sem_seg_file_name"]) as label:
            return vis.draw_sem_seg(np.asarray(label)).get_image()
    return vis.draw_dataset_dict({"annotations": dataset_dict.get("annotations", [])}).get_image()


def metadata_of(cfg):
    """The metadata for drawing: of the first test dataset, else the first training dataset."""
    names = list(cfg.DATASETS.TEST) + list(cfg.DATASETS.TRAIN)
    return MetadataCatalog.get(names[0] if names else "__unused")
