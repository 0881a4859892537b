"""MODEL_ZOO.md points at configs that exist and at download links of the released file names."""
import re

from conftest import ROOT
from test_config import ZOO


def test_every_zoo_row_links_its_config_and_checkpoint():
    text = (ROOT / "MODEL_ZOO.md").read_text()
    rows = re.findall(r"^\| \[(\w+)\]\((configs/[^)]+)\) \|.*\[model_final_([0-9a-f]{6})\.pkl\]\(([^)]+)\) \|$", text, re.M)
    assert sorted(stem for stem, *_ in rows) == sorted(ZOO)
    for stem, config, md5, url in rows:
        assert (ROOT / config).is_file(), config
        assert config.endswith(ZOO[stem])
        assert url == (
            "https://dl.fbaipublicfiles.com/maskformer/mask2former/coco/panoptic/"
            f"{stem}/model_final_{md5}.pkl"
        )
    assert "CC BY-NC 4.0" in text
