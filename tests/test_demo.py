"""tools/demo.py and its image reading: any kind of image in, one PNG per image out, in each output mode."""
import logging

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import CONFIGS, ROOT, load_script, make_cfg
from mask2former.visualization import read_image

CONFIG = CONFIGS / "toy" / "maskformer2_R50_narrow_toy.yaml"


def _load_demo():
    return load_script(ROOT / "tools" / "demo.py")


def _red_left_blue_right(height=20, width=40):
    rgb = np.zeros((height, width, 3), dtype=np.uint8)
    rgb[:, : width // 2, 0] = 255
    rgb[:, width // 2 :, 2] = 255
    return rgb


def _save_exif_rotated_jpeg(path):
    """A 40x20 JPEG, red left and blue right, whose EXIF says: rotate 90 degrees clockwise to display."""
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(_red_left_blue_right()).save(path, quality=95, exif=exif)


def test_read_image_exif_orientation(tmp_path):
    _save_exif_rotated_jpeg(tmp_path / "rotated.jpg")
    rgb = read_image(tmp_path / "rotated.jpg")
    assert rgb.shape == (40, 20, 3) and rgb.dtype == np.uint8
    # Turned clockwise, the red left half is now on top.
    assert rgb[2, 10, 0] > 200 and rgb[2, 10, 2] < 60
    assert rgb[-3, 10, 2] > 200 and rgb[-3, 10, 0] < 60


def test_read_image_grayscale_16bit_and_transparency(tmp_path):
    Image.fromarray(np.full((8, 12), 77, dtype=np.uint8)).save(tmp_path / "gray.png")
    gray = read_image(tmp_path / "gray.png")
    assert gray.shape == (8, 12, 3) and (gray == 77).all()

    ramp = np.linspace(0, 65535, 256).astype(np.uint16).reshape(16, 16)
    Image.fromarray(ramp).save(tmp_path / "deep.png")
    deep = read_image(tmp_path / "deep.png")
    assert deep.shape == (16, 16, 3)
    assert deep[0, 0, 0] == 0 and deep[-1, -1, 0] == 255
    assert abs(int(deep[8, 0, 0]) - 128) <= 2, "16-bit values are scaled, not clipped"

    rgba = np.zeros((6, 6, 4), dtype=np.uint8)
    rgba[:3] = (10, 200, 10, 255)  # opaque green top, fully transparent bottom
    Image.fromarray(rgba, "RGBA").save(tmp_path / "alpha.png")
    alpha = read_image(tmp_path / "alpha.png")
    assert (alpha[0] == (10, 200, 10)).all() and (alpha[-1] == 255).all()


def test_read_image_unreadable(tmp_path):
    (tmp_path / "notes.jpg").write_text("not an image")
    with pytest.raises(ValueError, match="cannot read image .*notes.jpg"):
        read_image(tmp_path / "notes.jpg")
    with pytest.raises(ValueError, match="cannot read image"):
        read_image(tmp_path / "missing.png")


class _Collect(logging.Handler):
    def __init__(self):
        super().__init__(logging.ERROR)
        self.messages = []

    def emit(self, record):
        self.messages.append(record.getMessage())


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    """A randomly initialised toy model saved as a checkpoint (the demo's job is the plumbing, not accuracy)."""
    from detectron2.modeling import build_model

    torch.manual_seed(0)
    model = build_model(make_cfg(CONFIG, ["MODEL.DEVICE cpu"]))
    path = tmp_path_factory.mktemp("weights") / "toy_random.pth"
    torch.save({"model": model.state_dict()}, path)
    return path


@pytest.mark.parametrize("mode", ["panoptic", "instance", "semantic"])
def test_demo_writes_one_png_per_image(tmp_path, weights, mode):
    inputs = tmp_path / "in"
    inputs.mkdir()
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (150, 190, 3), dtype=np.uint8)).save(inputs / "color.png")
    Image.fromarray(rng.integers(0, 256, (9, 17), dtype=np.uint8)).save(inputs / "tiny_gray.png")
    Image.fromarray(rng.integers(0, 256, (64, 48, 4), dtype=np.uint8), "RGBA").save(inputs / "rgba.png")
    _save_exif_rotated_jpeg(inputs / "rotated.jpg")
    (inputs / "broken.jpg").write_text("not an image")

    out = tmp_path / "out"
    argv = ["--config-file", str(CONFIG), "--weights", str(weights), "--input", str(inputs), "--output", str(out)]
    argv += ["--mode", mode, "--opts", "MODEL.DEVICE", "cpu"]
    errors = _Collect()
    logging.getLogger("demo").addHandler(errors)
    try:
        assert _load_demo().main(argv) == 1, "an unreadable input makes the exit status non-zero"
    finally:
        logging.getLogger("demo").removeHandler(errors)
    assert any("cannot read image" in m and "broken.jpg" in m for m in errors.messages)

    written = sorted(p.name for p in out.iterdir())
    assert written == ["color.png", "rgba.png", "rotated.png", "tiny_gray.png"]
    for name, (height, width) in {"color": (150, 190), "tiny_gray": (9, 17), "rotated": (40, 20)}.items():
        vis = np.asarray(Image.open(out / f"{name}.png"))
        assert vis.ndim == 3 and vis.shape[2] == 3
        # Drawn upright and enlarged for legibility, keeping the aspect ratio.
        assert vis.shape[0] >= height and vis.shape[1] >= width
        assert vis.shape[0] / vis.shape[1] == pytest.approx(height / width, rel=0.1)
