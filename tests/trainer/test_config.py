"""Config loading: base chains, overrides, and one clear error for every bad key, type or value."""
import logging
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

import trainer.train
from trainer.config import NULLABLE_TYPES, RULES, ConfigError, load_config, save_config

from tests.trainer.inprocess import run_module

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


@pytest.mark.parametrize("name", ["", ".", "..", "../elsewhere", "a/b", "/abs", "run 1"])
def test_a_run_name_is_one_folder_name(name):
    """An empty name made train.output_dir itself the run folder, and '..' or '/' one outside it:
    the folders train.overwrite clears (and, with an OBS train_url, every run there)."""
    with pytest.raises(ConfigError, match=rf"^name must be letters, digits, '\.', '_' or '-' \(one "
                                          rf"folder name, not '\.' or '\.\.'\), got {re.escape(repr(name))}$"):
        load_config(DEMO, [f"name={name}"])
    assert load_config(DEMO, ["name=k400_r50.v2-b"]).name == "k400_r50.v2-b"


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
    """The one real ``python -m trainer.train`` start here (the other CLI paths run in-process)."""
    result = subprocess.run([sys.executable, "-m", "trainer.train", "--config", str(DEMO), "train.lrr=1"],
                            cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "train.lrr" in lines[0], result.stderr


@pytest.mark.parametrize("path", sorted((REPO / "configs").glob("*.yaml")), ids=lambda p: p.name)
def test_every_shipped_config_loads(path):
    assert load_config(path).keys() == load_config(RECIPE).keys()


def _leaves(data: dict, prefix: str = "") -> dict:
    """``{"train.lr": 0.01, ...}``: every value of a nested config by its dotted key."""
    leaves = {}
    for key, value in data.items():
        leaves.update(_leaves(value, f"{prefix}{key}.") if isinstance(value, dict) else {prefix + key: value})
    return leaves


def test_rules_and_nullable_types_name_keys_of_the_recipe():
    leaves = _leaves(load_config(RECIPE).to_dict())
    assert set(RULES) <= set(leaves)
    assert set(NULLABLE_TYPES) == {key for key, value in leaves.items() if value is None}


@pytest.mark.parametrize("override, message", [
    ("train.eval_interval=0", "train.eval_interval must be >= 1, got 0"),
    ("train.log_interval=0", "train.log_interval must be >= 1, got 0"),
    ("train.lr=-1", "train.lr must be > 0, got -1.0"),
    ("train.lr=0", "train.lr must be > 0, got 0.0"),
    ("train.epochs=0", "train.epochs must be >= 1, got 0"),
    ("train.momentum=1", "train.momentum must be in [0, 1), got 1.0"),
    ("train.weight_decay=-1e-4", "train.weight_decay must be >= 0, got -0.0001"),
    ("train.label_smoothing=1", "train.label_smoothing must be in [0, 1), got 1.0"),
    ("train.lr_gamma=0", "train.lr_gamma must be in (0, 1], got 0.0"),
    ("train.lr_gamma=1.5", "train.lr_gamma must be in (0, 1], got 1.5"),
    ("train.lr_milestones=[4, 2]", "train.lr_milestones must be a strictly increasing list of epochs >= 1, "
                                   "got [4, 2]"),
    ("train.lr_milestones=[0, 2]", "train.lr_milestones must be a strictly increasing list of epochs >= 1, "
                                   "got [0, 2]"),
    ("train.warmup_epochs=-1", "train.warmup_epochs must be >= 0, got -1"),
    ("train.warmup_epochs=7", "train.warmup_epochs must be <= train.epochs (6), got 7"),
    ("train.keep_checkpoints=0", "train.keep_checkpoints must be >= 1, got 0"),
    ("train.loss_scale=0.5", "train.loss_scale must be >= 1, got 0.5"),
    ("train.loss_scale_window=0", "train.loss_scale_window must be >= 1, got 0"),
    ("train.lr_schedule=poly", "train.lr_schedule must be one of step|cosine, got 'poly'"),
    ("train.amp_level=O5", "train.amp_level must be one of auto|O0|O1|O2|O3, got 'O5'"),
    ("train.loss_scale_manager=static",
     "train.loss_scale_manager must be one of dynamic|fixed, got 'static'"),
    ("data.batch_size=0", "data.batch_size must be >= 1, got 0"),
    ("data.num_workers=0", "data.num_workers must be >= 1, got 0"),
    ("data.max_bad_samples=-1", "data.max_bad_samples must be >= 0, got -1"),
    ("data.num_segments=0", "data.num_segments must be >= 1, got 0"),
    ("data.frames_per_segment=0", "data.frames_per_segment must be >= 1, got 0"),
    ("data.short_side=-1", "data.short_side must be >= 0, got -1"),
    ("data.crop_size=0", "data.crop_size must be >= 1, got 0"),
    ("data.resize=squash", "data.resize must be one of keep|zoo, got 'squash'"),
    ("test.segments=0", "test.segments must be >= 1, got 0"),
    ("test.clips=0", "test.clips must be >= 1, got 0"),
    ("test.batch_size=0", "test.batch_size must be >= 1, got 0"),
    ("test.crop=0", "test.crop must be >= 1, got 0"),
    ("model.depth=34", "model.depth must be one of 50|101|152, got 34"),
    ("model.width=0", "model.width must be >= 1, got 0"),
    ("model.num_classes=0", "model.num_classes must be >= 1, got 0"),
    ("model.xception=sparse", "model.xception must be one of depthwise|dense, got 'sparse'"),
    ("mode=eager", "mode must be one of graph|pynative, got 'eager'"),
    ("device_target=TPU", "device_target must be one of auto|Ascend|CPU|GPU, got 'TPU'"),
    ("seed=-1", "seed must be >= 0, got -1"),
])
def test_impossible_values_fail_at_load_time(override, message):
    """Each would otherwise fail late (eval_interval=0: ZeroDivisionError after an epoch) or not at all."""
    with pytest.raises(ConfigError) as info:
        load_config(DEMO, [override])
    assert str(info.value) == message


@pytest.mark.parametrize("overrides, message", [
    (["data.short_side=64", "data.crop_size=65"], "data.crop_size must be <= data.short_side (64), got 65"),
    (["data.short_side=64", "test.crop=80"], "test.crop must be <= data.short_side (64), got 80"),
])
def test_crops_must_fit_a_set_short_side(overrides, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        load_config(DEMO, overrides)
    load_config(DEMO, ["data.short_side=0", "data.crop_size=300", "test.crop=300"])  # checked when read


def test_rules_see_every_override_whatever_their_order():
    cfg = load_config(DEMO, ["train.warmup_epochs=8", "train.epochs=10"])
    assert (cfg.train.warmup_epochs, cfg.train.epochs) == (8, 10)


def test_a_root_config_is_checked_too(tmp_path):
    """A saved run config has no base: it defines its keys and must still hold possible values."""
    data = load_config(DEMO).to_dict()
    data["train"]["eval_interval"] = 0
    (tmp_path / "run.yaml").write_text(yaml.safe_dump(data))
    with pytest.raises(ConfigError, match="train.eval_interval must be >= 1, got 0"):
        load_config(tmp_path / "run.yaml")


@pytest.mark.parametrize("override, message", [
    ("train.resume=5", "config key 'train.resume' expects str or null, got 5"),
    ("train.resume=[a, b]", "config key 'train.resume' expects str or null, got ['a', 'b']"),
    ("model.pretrained=3", "config key 'model.pretrained' expects str or null, got 3"),
    ("train.lr=null", "config key 'train.lr' may not be null (only model.pretrained, train.resume, "
                      "cloud.data_url, cloud.train_url, cloud.checkpoint_url, cloud.endpoint may)"),
])
def test_nullable_keys_are_typed_and_others_are_not_nullable(override, message):
    with pytest.raises(ConfigError) as info:
        load_config(DEMO, [override])
    assert str(info.value) == message


def test_nullable_keys_take_null_back(tmp_path):
    assert load_config(DEMO, ["train.resume=auto", "train.resume=null"]).train.resume is None
    assert load_config(DEMO, ["model.pretrained=r50.npz", "model.pretrained=~"]).model.pretrained is None
    child = tmp_path / "child.yaml"
    child.write_text(f"base: {RECIPE}\nmodel:\n  pretrained: ~\ntrain:\n  resume: 7\n")
    with pytest.raises(ConfigError, match="'train.resume' expects str or null, got 7"):
        load_config(child)


def test_yaml_syntax_errors_are_one_line(tmp_path):
    with pytest.raises(ConfigError, match=r"^override 'train.lr_milestones=\[5,' is not valid YAML: "):
        load_config(DEMO, ["train.lr_milestones=[5,"])
    bad = tmp_path / "bad.yaml"
    bad.write_text(f"base: {RECIPE}\ntrain:\n  lr: [1\n")
    with pytest.raises(ConfigError, match=f"^{re.escape(str(bad))} is not valid YAML: ") as info:
        load_config(bad)
    assert "\n" not in str(info.value)


def test_cli_reports_an_impossible_value_in_one_line_before_any_work(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)   # where a run folder (train.output_dir is relative) would appear
    assert run_module(trainer.train, ["--config", DEMO, "train.lr=-1"]) == 2
    captured = capsys.readouterr()
    assert captured.err.splitlines() == ["error: train.lr must be > 0, got -1.0"], captured.err
    assert captured.out == ""  # nothing started: no device, no run folder, no log line
    assert not list(tmp_path.iterdir())


def test_auto_device_is_cpu_without_the_ascend_runtime(caplog):
    """The test hosts have no Ascend runtime: auto runs on CPU in float32 and says why once."""
    import mindspore as ms
    from trainer.precision import amp_level
    from trainer.runtime import init_runtime, resolve_device_target
    cfg = load_config(RECIPE)
    assert cfg.device_target == "auto" and load_config(DEMO).device_target == "CPU"
    assert resolve_device_target(cfg) == "CPU" and amp_level(cfg) == "O0"
    with caplog.at_level(logging.INFO, logger="trainer.runtime"):
        # pynative: the later tests of this process keep MindSpore's default mode
        assert init_runtime(load_config(DEMO, ["device_target=auto", "mode=pynative"])) == (0, 1)
    assert [r.getMessage().split(" (")[0] for r in caplog.records] == [
        "device_target=auto: CPU, float32"]
    assert ms.get_context("device_target") == "CPU"


def test_explicit_ascend_without_its_runtime_is_one_line(capsys):
    assert run_module(trainer.train, ["--config", DEMO, "device_target=Ascend"]) == 2
    [line] = capsys.readouterr().err.splitlines()
    assert line.startswith("error: device_target=Ascend but the Ascend runtime does not load here (")
    assert line.endswith("): source CANN's set_env.sh (e.g. /usr/local/Ascend/ascend-toolkit/set_env.sh), "
                         "or set device_target=CPU or auto")
