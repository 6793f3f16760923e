"""Checkpoint directory bookkeeping: completeness, skipping partial/corrupt ones, retention, schedule."""

import json

import pytest
import torch

from megagrape.config import TrainConfig
from megagrape.errors import ConfigError
from megagrape.train import checkpoint as ckpt
from megagrape.train.schedule import WarmupDecayLR, lr_at


def make_complete(root, step, payload=b"weights"):
    partial = root / (ckpt.step_dir_name(step) + ".partial")
    partial.mkdir(parents=True)
    (partial / "mp_rank_00_model_states.pt").write_bytes(payload)
    (partial / ckpt.STATE_FILE).write_text(json.dumps({"step": step}))
    ckpt.finalize_save(partial, root / ckpt.step_dir_name(step), step, 1, root)
    return root / ckpt.step_dir_name(step)


def test_newest_complete_skips_partial_and_corrupt(tmp_path):
    make_complete(tmp_path, 10)
    newer = make_complete(tmp_path, 20)
    (tmp_path / "step_000030.partial").mkdir()  # killed mid-save: never a candidate
    (tmp_path / "step_000040").mkdir()  # renamed by hand but never marked complete
    (newer / "mp_rank_00_model_states.pt").write_bytes(b"trunc")  # size differs from the record
    info, notes = ckpt.newest_complete(tmp_path)
    assert info.step == 10
    assert any("step_000040" in n and "COMPLETE.json is missing" in n for n in notes)
    assert any("step_000020" in n and "has 5 bytes, expected 7" in n for n in notes)
    assert (tmp_path / "latest").read_text().strip() == "step_000020"


def test_resolve_resume_modes(tmp_path):
    assert ckpt.resolve_resume("none", tmp_path) == (None, [])
    assert ckpt.resolve_resume("auto", tmp_path) == (None, [])
    path = make_complete(tmp_path, 5)
    info, _ = ckpt.resolve_resume(str(path), tmp_path)
    assert info.step == 5
    with pytest.raises(ConfigError, match="not a step_N checkpoint directory"):
        ckpt.resolve_resume(str(tmp_path), tmp_path)
    (path / ckpt.COMPLETE_FILE).unlink()
    with pytest.raises(ConfigError, match=r"cannot be used: COMPLETE\.json is missing"):
        ckpt.resolve_resume(str(path), tmp_path)


def test_retention_keeps_newest_and_removes_partials(tmp_path):
    for step in (1, 2, 3, 4):
        make_complete(tmp_path, step)
    (tmp_path / "step_000005.partial").mkdir()
    ckpt.apply_retention(tmp_path, keep_last=2)
    assert sorted(p.name for p in tmp_path.iterdir() if p.is_dir()) == [
        "step_000003",
        "step_000004",
    ]


def test_model_shape_mismatch_names_the_tensor(tmp_path):
    saved = torch.nn.Linear(4, 3)
    torch.save({"module": saved.state_dict()}, tmp_path / "mp_rank_00_model_states.pt")
    with pytest.raises(
        ConfigError, match=r"tensor 'weight' has shape \(3, 4\) but this model expects \(5, 4\)"
    ):
        ckpt.check_model_shapes(torch.nn.Linear(4, 5), tmp_path)
    ckpt.check_model_shapes(torch.nn.Linear(4, 3), tmp_path)


@pytest.mark.parametrize("style", ["constant", "linear", "cosine", "exponential"])
def test_lr_schedule_warmup_and_decay(style):
    cfg = TrainConfig(
        train_iters=110, lr=1e-3, min_lr=1e-4, lr_warmup_iters=10, lr_decay_style=style
    )
    assert lr_at(0, cfg) == pytest.approx(1e-4)
    assert lr_at(9, cfg) == pytest.approx(1e-3)
    end = lr_at(110, cfg)
    assert end == pytest.approx(1e-3 if style == "constant" else 1e-4)
    middle = lr_at(60, cfg)
    assert (middle == pytest.approx(1e-3)) if style == "constant" else (1e-4 < middle < 1e-3)


def test_scheduler_state_round_trip():
    cfg = TrainConfig(train_iters=50, lr=1e-2, min_lr=0.0, lr_decay_style="cosine")
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.0)
    sched = WarmupDecayLR(opt, cfg)
    for _ in range(7):
        sched.step()
    other = WarmupDecayLR(torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.0), cfg)
    other.load_state_dict(sched.state_dict())
    assert other.get_last_lr() == sched.get_last_lr() == [pytest.approx(lr_at(7, cfg))]
