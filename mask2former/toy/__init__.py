"""
The project's own small datasets, generated on demand (not imported by ``mask2former``): rendering needs OpenCV and
takes seconds, registration (``mask2former.data.datasets.register_toy_panoptic``) only records paths.
"""
from ..data.datasets.register_toy_panoptic import default_root, is_generated, register_toy_panoptic, split_paths
from .panoptic import generate_toy_panoptic, render_image, write_split

__all__ = [
    "default_root",
    "generate_toy_panoptic",
    "is_generated",
    "register_toy_panoptic",
    "render_image",
    "split_paths",
    "write_split",
]
