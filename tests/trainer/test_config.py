"""Config loading: base chains, overrides, and one clear error for every bad key or type."""
import subprocess
import sys
from pathlib import Path

import pytest

from trainer.config import ConfigError, load_config, save_config

REPO = Path(__file__).resolve().parents[2]
DEMO = REPO / "configs" / "demo.yaml"
RECIPE = REPO / "configs" / "stnet_r50_k400.yaml"


def test_demo_inherits_the_recipe_and_overrides_it():
    demo, recipe = load_config(DEMO), load_config(RECIPE)
    assert demo.keys() == recipe.keys()
    assert demo.train.momentum == recipe.train.momentum == 0.9
    assert demo.model.num_classes == 4 and recipe.model.num_classes == 400


def test_overrides_are_typed():
    cfg = load_config(DEMO, ["train.lr=0.2", "train.weight_decay=1e-4", "model.xception=dense",
                             "train.lr_milestones=[3, 5]", "train.resume=auto"])
    assert cfg.train.lr == 0.2 and isinstance(cfg.train.weight_decay, float)
    assert cfg.model.xception == "dense" and cfg.train.lr_milestones == [3, 5]
    assert cfg.train.resume == "auto"


@pytest.mark.parametrize("override, fragment", [
    ("train.lrr=1", "unknown config key 'train.lrr'"),
    ("nosuch=1", "unknown config key 'nosuch'"),
    ("train.lr=fast", "'train.lr' expects float"),
    ("model.depth=50.5", "'model.depth' expects int"),
    ("train=3", "'train' is a section"),
    ("train.lr_milestones=[a]", "'train.lr_milestones[0]' expects int"),
    ("train.lr", "override must look like section.key=value"),
])
def test_bad_overrides_name_the_key(override, fragment):
    with pytest.raises(ConfigError, match=fragment.replace("[", r"\[").replace("]", r"\]")):
        load_config(DEMO, [override])


def test_bad_key_in_a_file(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(f"base: {RECIPE}\ntrain:\n  epohcs: 3\n")
    with pytest.raises(ConfigError, match="train.epohcs"):
        load_config(bad)


def test_missing_file_and_cycle(tmp_path):
    with pytest.raises(FileNotFoundError):
        load_config(tmp_path / "none.yaml")
    a = tmp_path / "a.yaml"
    a.write_text("base: a.yaml\n")
    with pytest.raises(ConfigError, match="cycle"):
        load_config(a)


def test_saved_config_reloads_identically(tmp_path):
    cfg = load_config(DEMO, ["train.lr=0.3"])
    save_config(cfg, tmp_path / "resolved.yaml")
    assert load_config(tmp_path / "resolved.yaml") == cfg


def test_cli_reports_a_bad_key_in_one_line():
    result = subprocess.run([sys.executable, "-m", "trainer.train", "--config", str(DEMO), "train.lrr=1"],
                            cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "train.lrr" in lines[0], result.stderr
