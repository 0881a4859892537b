"""Our zoo YAMLs, merged over the defaults, equal the original's fully merged configs on every key."""
import re

import pytest
import yaml
from detectron2.config import get_cfg
from detectron2.projects.deeplab import add_deeplab_config

from conftest import CONFIGS, FIXTURES, ROOT, ZOO_CONFIGS, make_cfg
from mask2former import add_maskformer2_config

# Keys we add on top of the original's, each with a default that keeps the original's behaviour.
ADDED_KEYS = {
    "MODEL.MASK_FORMER.TEST.AUTOCAST_DTYPE": "",  # the fast inference path (off)
    "MODEL.WEIGHTS_MD5_CHECK": True,  # checkpoint integrity (on)
    "INPUT.LSJ_DROP_EMPTY_TARGETS": False,  # coco_panoptic_lsj keeps empty targets (the original's)
    "DATALOADER.SKIP_UNREADABLE_SAMPLES": False,  # an unreadable training file stops training
    "DATALOADER.MAX_UNREADABLE_SAMPLES": 100,  # with skipping on, the limit
}
R50 = "coco/panoptic-segmentation/maskformer2_R50_bs16_50ep.yaml"


def _flatten(tree, prefix=""):
    out = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            out.update(_flatten(value, f"{prefix}{key}."))
        else:
            out[prefix + key] = list(value) if isinstance(value, tuple) else value
    return out


def test_every_zoo_config_has_its_fixture_and_back():
    """The 47 zoo configs of the original are all here, and every config of ours outside Base files has one."""
    assert len(ZOO_CONFIGS) >= 47, f"fixtures not found under {FIXTURES}/original_configs"
    ours = sorted(
        str(p.relative_to(CONFIGS))
        for p in CONFIGS.rglob("*.yaml")
        if not p.name.startswith("Base-") and p.relative_to(CONFIGS).parts[0] != "toy"
    )
    assert ours == ZOO_CONFIGS


@pytest.mark.parametrize("config", ZOO_CONFIGS)
def test_merged_config_equals_original(config):
    text = (CONFIGS / config).read_text()
    assert "!!" not in text, "our configs state every value plainly, without YAML tags"
    ours = _flatten(yaml.safe_load(make_cfg(CONFIGS / config).dump()))
    expected = _flatten(yaml.safe_load((FIXTURES / "original_configs" / config).read_text()))
    assert {k: ours[k] for k in ADDED_KEYS if k in ours} == ADDED_KEYS, "an added key is missing or not its default"
    ours = {k: v for k, v in ours.items() if k not in ADDED_KEYS}
    assert sorted(ours) == sorted(expected), "key sets differ"
    differing = {k: (ours[k], expected[k]) for k in expected if ours[k] != expected[k]}
    assert not differing


def test_unknown_key_in_user_yaml_is_an_error(tmp_path):
    user = tmp_path / "user.yaml"
    user.write_text(f"_BASE_: {CONFIGS / R50}\nMODEL:\n  MASK_FORMER:\n    NUM_QUERIES: 50\n")
    cfg = get_cfg()
    add_deeplab_config(cfg)
    add_maskformer2_config(cfg)
    with pytest.raises(KeyError, match="NUM_QUERIES"):
        cfg.merge_from_file(str(user))


# ``name = cfg.A.B`` (or ``= other_alias.C``), and reads ``name.X.Y``, in a Python source.
_ALIAS = re.compile(r"^\s*([a-z_]\w*) = ([A-Za-z_]\w*)((?:\.[A-Z][A-Z0-9_]*)+)\s*$", re.M)
_READ = re.compile(r"\b([A-Za-z_]\w*)((?:\.[A-Z][A-Z0-9_]*)+)")
COMPATIBILITY_COMMENT = "# Kept only for compatibility"


def _config_paths(text, alias_source=""):
    """The full config keys ``text`` names through ``cfg`` or an alias of one of its nodes (defined in either)."""
    aliases, paths = {"cfg": ""}, set()
    for name, base, path in _ALIAS.findall(alias_source + "\n" + text):
        if base in aliases:
            aliases[name] = aliases[base] + path
    for base, path in _READ.findall(text):
        if base in aliases:
            paths.add((aliases[base] + path).lstrip("."))
    return paths


def test_every_key_we_add_is_read_except_the_compatibility_group():
    """add_maskformer2_config's keys are read by the package or its scripts, but for one commented group."""
    plain = get_cfg()
    add_deeplab_config(plain)
    full = plain.clone()
    add_maskformer2_config(full)
    added = set(_flatten(yaml.safe_load(full.dump()))) - set(_flatten(yaml.safe_load(plain.dump())))

    config_source = (ROOT / "mask2former/config.py").read_text()
    head, _, rest = config_source.partition(COMPATIBILITY_COMMENT)
    group = rest.split("\n\n")[0]  # the group ends at the next blank line
    compatibility = _config_paths(group, alias_source=head)
    assert compatibility, f"mask2former/config.py has no group under {COMPATIBILITY_COMMENT!r}"

    sources = [p for p in (ROOT / "mask2former").rglob("*.py") if p.name != "config.py"]
    sources += [ROOT / "train_net.py", *(ROOT / "tools").glob("*.py")]
    read = set().union(*(_config_paths(p.read_text()) for p in sources))
    assert sorted(added - read - compatibility) == [], "keys nothing reads: move them to the compatibility group"
    assert sorted(compatibility & read) == [], "keys of the compatibility group that code reads: move them out"
