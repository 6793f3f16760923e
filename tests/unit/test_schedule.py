"""Learning-rate schedule: Megatron-LM step semantics, WSD, validation, DeepSpeed driving."""

import math

import pytest
import torch
from megatron.core.optimizer_param_scheduler import OptimizerParamScheduler

from megagrape.config import LR_WSD_DECAY_STYLES, TrainConfig, load_config
from megagrape.errors import ConfigError
from megagrape.train.schedule import WarmupDecayLR, decay_end, lr_at


def lr_before_decay_iters_fix(step: int, cfg: TrainConfig) -> float:
    """The schedule from before the fix (lr_decay_iters counted after warmup), lr_decay_iters=0."""
    if cfg.lr_warmup_iters > 0 and step < cfg.lr_warmup_iters:
        return cfg.lr * (step + 1) / cfg.lr_warmup_iters
    decay_iters = max(cfg.train_iters - cfg.lr_warmup_iters, 1)
    progress = min(max(step - cfg.lr_warmup_iters, 0) / decay_iters, 1.0)
    if cfg.lr_decay_style == "constant":
        return cfg.lr
    if cfg.lr_decay_style == "linear":
        return cfg.lr + (cfg.min_lr - cfg.lr) * progress
    if cfg.lr_decay_style == "cosine":
        return cfg.min_lr + (cfg.lr - cfg.min_lr) * 0.5 * (1.0 + math.cos(math.pi * progress))
    if cfg.min_lr <= 0:
        return cfg.lr * (1.0 - progress)
    return cfg.lr * (cfg.min_lr / cfg.lr) ** progress


def quickstart_train() -> TrainConfig:
    return load_config("configs/quickstart.yaml").train


@pytest.mark.parametrize(
    "cfg",
    [
        quickstart_train(),
        TrainConfig(train_iters=7, lr=1e-2, min_lr=0.0, lr_warmup_iters=7),
        *(
            TrainConfig(
                train_iters=iters,
                lr=3e-4,
                min_lr=min_lr,
                lr_warmup_iters=warmup,
                lr_decay_style=style,
            )
            for style in ("constant", "linear", "cosine", "exponential")
            for iters, warmup in ((1, 0), (50, 0), (50, 9), (50, 49))
            for min_lr in (0.0, 3e-5)
        ),
    ],
    ids=lambda cfg: f"{cfg.lr_decay_style}-T{cfg.train_iters}-W{cfg.lr_warmup_iters}-m{cfg.min_lr}",
)
def test_lr_decay_iters_zero_keeps_the_old_lr_at_every_step(cfg):
    cfg.validate()
    assert cfg.lr_decay_iters == 0
    for step in range(cfg.train_iters + 5):
        assert lr_at(step, cfg) == lr_before_decay_iters_fix(step, cfg), step


def megatron_scheduler(cfg: TrainConfig) -> OptimizerParamScheduler:
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.0)
    wsd = cfg.lr_decay_style == "wsd"
    return OptimizerParamScheduler(
        opt,
        init_lr=0.0,
        max_lr=cfg.lr,
        min_lr=cfg.min_lr,
        lr_warmup_steps=cfg.lr_warmup_iters,
        lr_decay_steps=decay_end(cfg),
        lr_decay_style="WSD" if wsd else cfg.lr_decay_style,
        start_wd=cfg.weight_decay,
        end_wd=cfg.weight_decay,
        wd_incr_steps=cfg.train_iters,
        wd_incr_style="constant",
        wsd_decay_steps=cfg.lr_wsd_decay_iters if wsd else None,
        lr_wsd_decay_style=cfg.lr_wsd_decay_style if wsd else None,
    )


MEGATRON_CASES = [
    dict(lr_decay_style="cosine"),
    dict(lr_decay_style="cosine", lr_decay_iters=70),
    dict(lr_decay_style="cosine", lr_decay_iters=130),
    dict(lr_decay_style="linear", lr_decay_iters=70),
    *(
        dict(lr_decay_style="wsd", lr_wsd_decay_style=style, **extra)
        for style in LR_WSD_DECAY_STYLES
        for extra in (
            dict(lr_wsd_decay_iters=25),
            dict(lr_decay_iters=80, lr_wsd_decay_iters=30),
            dict(lr_decay_iters=80, lr_wsd_decay_iters=68),  # decay starts right after warmup
        )
    ),
]


@pytest.mark.parametrize(
    "fields", MEGATRON_CASES, ids=lambda f: "-".join(f"{k}={v}" for k, v in f.items())
)
def test_lr_after_warmup_equals_megatron_core(fields):
    cfg = TrainConfig(train_iters=100, lr=2e-3, min_lr=2e-4, lr_warmup_iters=12, **fields)
    cfg.validate()
    megatron = megatron_scheduler(cfg)
    for step in range(cfg.lr_warmup_iters, max(cfg.train_iters, decay_end(cfg)) + 10):
        megatron.num_steps = step
        assert lr_at(step, cfg) == pytest.approx(megatron.get_lr({}), rel=1e-12, abs=1e-18), step


def test_warmup_is_one_step_ahead_of_megatron_core():
    cfg = TrainConfig(train_iters=100, lr=2e-3, min_lr=2e-4, lr_warmup_iters=12)
    megatron = megatron_scheduler(cfg)
    for step in range(cfg.lr_warmup_iters):
        megatron.num_steps = step + 1
        assert lr_at(step, cfg) == pytest.approx(megatron.get_lr({}), rel=1e-12), step


def test_decay_counts_from_step_zero_and_stays_at_min_lr():
    cfg = TrainConfig(
        train_iters=100,
        lr=1e-3,
        min_lr=1e-4,
        lr_warmup_iters=10,
        lr_decay_iters=60,
        lr_decay_style="linear",
    )
    assert lr_at(10, cfg) == pytest.approx(1e-3)
    assert lr_at(35, cfg) == pytest.approx(5.5e-4)  # halfway between step 10 and step 60
    assert [lr_at(s, cfg) for s in (60, 61, 99)] == [pytest.approx(1e-4)] * 3


def test_decay_iters_beyond_the_run_ends_above_min_lr():
    cfg = TrainConfig(
        train_iters=100, lr=1e-3, min_lr=0.0, lr_decay_iters=200, lr_decay_style="linear"
    )
    cfg.validate()
    assert lr_at(99, cfg) == pytest.approx(1e-3 * (1 - 99 / 200))


@pytest.mark.parametrize(
    ("style", "quarter"),
    [
        ("linear", 0.75),
        ("cosine", 0.5 * (1 + math.cos(math.pi / 4))),
        ("exponential", 2 * 0.5**0.25 - 1),
        ("minus_sqrt", 0.5),
    ],
)
def test_wsd_phases(style, quarter):
    cfg = TrainConfig(
        train_iters=100,
        lr=1.0,
        min_lr=0.0,
        lr_warmup_iters=10,
        lr_decay_iters=90,
        lr_decay_style="wsd",
        lr_wsd_decay_iters=40,
        lr_wsd_decay_style=style,
    )
    cfg.validate()
    assert lr_at(9, cfg) == pytest.approx(1.0)
    assert {lr_at(s, cfg) for s in range(10, 51)} == {1.0}  # stable until step 90 - 40
    assert lr_at(60, cfg) == pytest.approx(quarter)
    assert [lr_at(s, cfg) for s in (90, 95)] == [pytest.approx(0.0, abs=1e-15)] * 2


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        (
            dict(lr_warmup_iters=10, lr_decay_iters=10),
            r"train.lr_decay_iters=10 is not allowed; allowed: 0 \(= train_iters\) or an integer"
            r" > lr_warmup_iters \(10\)",
        ),
        (dict(lr_decay_iters=-1), r"train.lr_decay_iters=-1 is not allowed"),
        (
            dict(lr_wsd_decay_style="minus-sqrt"),
            r"train.lr_wsd_decay_style='minus-sqrt' is not allowed; allowed: linear, cosine,"
            r" exponential, minus_sqrt",
        ),
        (
            dict(lr_decay_style="wsd"),
            r"train.lr_wsd_decay_iters=0 is not allowed; allowed with lr_decay_style wsd: 1..90",
        ),
        (
            dict(lr_decay_style="wsd", lr_decay_iters=50, lr_wsd_decay_iters=41),
            r"train.lr_wsd_decay_iters=41 is not allowed; allowed with lr_decay_style wsd: 1..40",
        ),
        (dict(lr_wsd_decay_iters=-3), r"train.lr_wsd_decay_iters=-3 is not allowed; allowed: >= 0"),
    ],
)
def test_lr_field_validation(fields, message):
    cfg = TrainConfig(**{"train_iters": 100, "lr_warmup_iters": 10, **fields})
    with pytest.raises(ConfigError, match=message):
        cfg.validate()


def test_deepspeed_style_step_advances_one_step():
    cfg = TrainConfig(
        train_iters=20,
        lr=1e-2,
        min_lr=0.0,
        lr_warmup_iters=2,
        lr_decay_style="wsd",
        lr_wsd_decay_iters=5,
    )
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.0)
    sched = WarmupDecayLR(opt, cfg)
    sched.step(**{})  # what DeepSpeed's engine.step() calls
    sched.step(16)  # DeepSpeed's fallback passes train_batch_size(); still one step
    assert sched.state_dict() == {"step_count": 2}
    assert sched.get_last_lr() == [pytest.approx(lr_at(2, cfg))]
