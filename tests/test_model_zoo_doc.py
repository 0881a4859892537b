"""MODEL_ZOO.md holds every published row of the original's zoo: its metrics, config, model id and download."""
import json
import re

import pytest

from conftest import FIXTURES, ROOT, ZOO_CONFIGS

# Where the original's table is wrong, MODEL_ZOO.md says so beside the table and shows the right value.
CONFIG_FIXES = {
    # the original links a file it does not have
    "configs/mapillary-vistas/semantic-segmentation/maskformer_R50_bs16_300k.yaml": (
        "configs/mapillary-vistas/semantic-segmentation/maskformer2_R50_bs16_300k.yaml"
    ),
}
BACKBONE_FIXES = {
    # the original calls this Swin-L model's backbone R50
    "configs/ade20k/instance-segmentation/swin/maskformer2_swin_large_IN21k_384_bs16_160k.yaml": "Swin-L (IN21k)",
}
NOT_METRICS = {"dataset", "task", "config", "weights", "url_path"}


def _tables(text):
    """{(dataset heading, task heading): [row dict by column name]} of the markdown tables under ## / ###."""
    tables, dataset, task, header = {}, None, None, None
    for line in text.splitlines():
        if line.startswith("## "):
            dataset, task = line[3:].strip(), None
        elif line.startswith("### "):
            task = line[4:].strip()
        elif line.startswith("| config |"):
            header = [c.strip() for c in line.strip("|").split("|")]
            tables.setdefault((dataset, task), [])
        elif line.startswith("|") and header and not line.startswith("|---"):
            cells = [c.strip() for c in line.strip().strip("|").split(" | ")]
            assert len(cells) == len(header), line
            tables[(dataset, task)].append(dict(zip(header, cells)))
        elif not line.startswith("|"):
            header = None
    return tables


def _link(cell):
    """The target of a ``[text](target)`` table cell."""
    return re.fullmatch(r"\[\w+\]\((\S+)\)", cell).group(1)


@pytest.fixture(scope="module")
def published():
    return json.loads((FIXTURES / "original_zoo_rows.json").read_text())


@pytest.fixture(scope="module")
def tables():
    return _tables((ROOT / "MODEL_ZOO.md").read_text())


def test_one_table_per_dataset_and_task_with_every_row(published, tables):
    expected = {}
    for row in published:
        expected.setdefault((row["dataset"], row["task"]), []).append(CONFIG_FIXES.get(row["config"], row["config"]))
    ours = {key: [_link(r["config"]) for r in rows] for key, rows in tables.items()}
    assert ours == expected
    assert sorted(c for rows in expected.values() for c in rows) == sorted(f"configs/{c}" for c in ZOO_CONFIGS)


def test_every_row_matches_the_published_one(published, tables):
    ours = {_link(r["config"]): r for rows in tables.values() for r in rows}
    for row in published:
        config = CONFIG_FIXES.get(row["config"], row["config"])
        table_row = ours[config]
        assert table_row["config"] == f"[{config.rsplit('/', 1)[1][: -len('.yaml')]}]({config})"
        assert (ROOT / config).is_file(), config
        columns = [c for c in row if c not in NOT_METRICS]
        assert list(table_row) == ["config", *columns, "download"], config
        for column in columns:
            value = BACKBONE_FIXES.get(row["config"], row[column]) if column == "Backbone" else row[column]
            assert table_row[column] == value, (config, column)
        assert re.fullmatch(r"model_final_[0-9a-f]{6}\.pkl", row["weights"])
        assert table_row["download"] == f"[{row['weights']}](https://dl.fbaipublicfiles.com/{row['url_path']})"


def test_license_is_stated():
    assert "CC BY-NC 4.0" in (ROOT / "MODEL_ZOO.md").read_text()
