"""Run config: YAML + overrides, typed fields, validation messages, DeepSpeed reconciliation."""

import json

import pytest
import torch

from megagrape.config import RunConfig, load_config, resolved_dict, save_config
from megagrape.configtools import apply_overrides, from_dict
from megagrape.ds_config import read_ds_config, resolve_ds_config
from megagrape.errors import ConfigError
from megagrape.mixture.grape import GrapeOptions


def write_yaml(tmp_path, text):
    path = tmp_path / "run.yaml"
    path.write_text(text)
    return path


def test_yaml_and_overrides_are_typed(tmp_path):
    path = write_yaml(tmp_path, "name: demo\ntrain:\n  lr: 0.001\n  train_iters: 10\n")
    cfg = load_config(
        path,
        ["train.lr=3e-4", "train.train_iters=20", "data.domains=a,b", "logging.tensorboard=false"],
    )
    assert cfg.name == "demo"
    assert cfg.train.lr == pytest.approx(3e-4) and isinstance(cfg.train.lr, float)
    assert cfg.train.train_iters == 20
    assert cfg.data.domains == ["a", "b"]
    assert cfg.logging.tensorboard is False


def test_unknown_key_suggests_nearest(tmp_path):
    path = write_yaml(tmp_path, "train:\n  learning_rate: 0.1\n")
    with pytest.raises(ConfigError, match=r"unknown config key 'train.learning_rate'"):
        load_config(path)
    with pytest.raises(ConfigError, match=r"did you mean 'train_iters'"):
        load_config(None, ["train.train_iter=5"])


def test_wrong_types_name_the_field():
    with pytest.raises(ConfigError, match=r"train.micro_batch_size='four' must be an integer"):
        load_config(None, ["train.micro_batch_size=four"])
    with pytest.raises(ConfigError, match=r"logging.tensorboard=3 must be true or false"):
        load_config(None, ["logging.tensorboard=3"])


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("train.lr=-1", r"train.lr=-1.0 is not allowed"),
        (
            "train.lr_decay_style=step",
            r"train.lr_decay_style='step' is not allowed; allowed: constant",
        ),
        ("mixture.apply=both", r"mixture.apply='both' is not allowed"),
        ("mixture.interval=0", r"mixture.interval=0"),
        ("data.budget_factor=1.5", r"data.budget_factor=1.5"),
        ("targets.eval_fraction=1.0", r"targets.eval_fraction=1.0"),
        (
            "targets.eval_split=test",
            r"targets.eval_split='test' is not allowed; allowed: eval or signal",
        ),
    ],
)
def test_range_errors(override, message):
    cfg = load_config(None, ["data.corpus=/tmp/x", override])
    with pytest.raises(ConfigError, match=message):
        cfg.validate(world_size=1)


def test_batch_arithmetic_is_explained():
    cfg = load_config(
        None, ["data.corpus=/tmp/x", "train.global_batch_size=12", "train.micro_batch_size=4"]
    )
    with pytest.raises(
        ConfigError,
        match=r"multiple of train.micro_batch_size \(4\) x data-parallel size \(2\) = 8",
    ):
        cfg.validate(world_size=2)
    cfg.validate(world_size=3)
    assert cfg.gradient_accumulation_steps(3) == 1


def test_heads_not_divisible_by_tp_is_rejected_before_any_process_group():
    cfg = load_config(
        None,
        [
            "data.corpus=/tmp/x",
            "model.num_attention_heads=3",
            "model.hidden_size=48",
            "parallel.tensor_parallel=2",
        ],
    )
    assert not torch.distributed.is_initialized()
    with pytest.raises(ConfigError, match=r"num_attention_heads"):
        cfg.validate(world_size=2)


def test_config_round_trips_through_yaml(tmp_path):
    cfg = load_config(None, ["name=rt", "mixture.method=grape", "mixture.options={mu_a: 0.5}"])
    save_config(cfg, tmp_path / "c.yaml")
    again = load_config(tmp_path / "c.yaml")
    # the file records the method's defaults too; every field, options included, survives
    assert again.to_dict() == resolved_dict(cfg)
    assert resolved_dict(again) == resolved_dict(cfg)
    assert again.mixture.options["mu_a"] == 0.5
    assert again.mixture.options["mu_z"] == GrapeOptions().mu_z
    assert again.train == cfg.train and again.model == cfg.model


def test_apply_overrides_creates_sections():
    merged = apply_overrides({"a": {"b": 1}}, ["a.c=2", "d.e=x"])
    assert merged == {"a": {"b": 1, "c": 2}, "d": {"e": "x"}}
    with pytest.raises(ConfigError, match="must look like"):
        apply_overrides({}, ["novalue"])


def test_from_dict_rejects_non_mapping_section():
    with pytest.raises(ConfigError, match="must be a mapping"):
        from_dict(RunConfig, {"train": 3})


def ds_file(tmp_path, data):
    path = tmp_path / "ds.json"
    path.write_text(json.dumps(data))
    return path


def test_ds_config_batch_contradiction_explains_arithmetic(tmp_path):
    cfg = load_config(None, ["train.global_batch_size=16", "train.micro_batch_size=4"])
    ds = read_ds_config(
        ds_file(tmp_path, {"train_batch_size": 32, "zero_optimization": {"stage": 1}})
    )
    with pytest.raises(
        ConfigError,
        match=r"train_batch_size=32 contradicts.*= train.micro_batch_size 4 x gradient accumulation 2 x data-parallel size 2",
    ):
        resolve_ds_config(ds, cfg, world_size=2, device=torch.device("cpu"), pipeline=False)


def test_ds_config_fills_auto_fields_and_precision(tmp_path):
    cfg = load_config(
        None, ["train.global_batch_size=16", "train.micro_batch_size=2", "train.clip_grad=0.5"]
    )
    ds = read_ds_config("configs/ds/zero2.json")
    out = resolve_ds_config(ds, cfg, world_size=2, device=torch.device("cpu"), pipeline=False)
    assert out["train_micro_batch_size_per_gpu"] == 2
    assert out["gradient_accumulation_steps"] == 4
    assert out["train_batch_size"] == 16
    assert out["gradient_clipping"] == 0.5
    assert out["bf16"]["enabled"] is False
    assert out["managed_gradient_accumulation"] is False
    assert ds["train_batch_size"] == "auto", "the input dict must not be modified"


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"optimizer": {"type": "Adam"}}, r"has an 'optimizer' block"),
        ({"zero_optimization": {"stage": 4}}, r"stage=4 is not 0, 1, 2 or 3"),
        (
            {"zero_optimization": {"stage": 1, "overlap_comm": True}},
            r"overlap_comm=true with stage 1",
        ),
        ({"gradient_clipping": 5.0}, r"gradient_clipping=5.0 contradicts train.clip_grad=1.0"),
        ({"bf16": {"enabled": True}}, r"bf16.enabled=true but cpu has no bf16 support"),
    ],
)
def test_ds_config_bad_input(tmp_path, data, message):
    cfg = load_config(None, [])
    with pytest.raises(ConfigError, match=message):
        resolve_ds_config(data, cfg, world_size=1, device=torch.device("cpu"), pipeline=False)


def test_ds_config_file_errors(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        read_ds_config(tmp_path / "missing.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(ConfigError, match="not valid JSON"):
        read_ds_config(bad)
