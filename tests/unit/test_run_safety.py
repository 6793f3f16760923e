"""The parts that keep a long run safe, without processes: run identity, checkpoint checksums,
TensorBoard history on resume, the wandb id, the divergence guard."""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from megagrape.config import load_config
from megagrape.errors import ConfigError, TrainingDiverged
from megagrape.train import checkpoint as ckpt
from megagrape.train.callbacks.divergence import DivergenceGuard
from megagrape.train.identity import RunIdentity, check_resume_identity, identity_changes
from megagrape.train.identity import run_identity as make_identity
from megagrape.train.metrics import MetricsWriter, wandb_run_id


def identity_of(overrides=(), tokenizer="t" * 64, data_parallel=2, zero_stage=1) -> RunIdentity:
    cfg = load_config(None, ["mixture.method=grape", *overrides])
    return make_identity(cfg, tokenizer, [], {}, data_parallel, zero_stage)


def test_identity_names_every_changed_field_and_ignores_free_ones():
    saved = identity_of(["train.lr=1e-3", "seed=1", "logging.interval=10"])
    same = identity_of(["train.lr=1e-3", "seed=1", "logging.interval=99", "name=other"])
    assert identity_changes(saved, same) == {}
    changed = identity_of(["train.lr=2e-3", "seed=2", "mixture.options={mu_a: 0.5}"])
    assert set(identity_changes(saved, changed)) == {
        "config.train.lr",
        "config.seed",
        "config.mixture.options",
    }
    with pytest.raises(ConfigError) as info:
        check_resume_identity(saved, changed, [], Path("ck/step_000010"))
    message = str(info.value)
    for name in ("  train.lr: 0.001 -> 0.002", "  seed: 1 -> 2", "  mixture.options: "):
        assert name in message
    assert "checkpoint.allow_changes=[mixture.options, seed, train.lr]" in message


def test_loader_settings_do_not_change_the_trajectory_or_block_old_checkpoints():
    saved = identity_of(["data.loader_workers=0"])
    assert identity_changes(saved, identity_of(["data.loader_workers=2"])) == {}
    old = saved.as_dict()  # written before the loader fields existed
    for section in (old["config"], old["config"].get("data", {})):
        for key in [k for k in section if "loader_" in k]:
            del section[key]
    assert identity_changes(RunIdentity.from_dict(old), identity_of()) == {}


def test_allowed_changes_pass_and_are_returned_but_others_still_stop():
    saved, changed = identity_of(["train.lr=1e-3"]), identity_of(["train.lr=5e-4", "seed=9"])
    with pytest.raises(ConfigError, match="seed"):
        check_resume_identity(saved, changed, ["train.lr"], Path("ck/step_1"))
    allowed = check_resume_identity(saved, changed, ["train", "seed"], Path("ck/step_1"))
    assert allowed == {"train.lr": (1e-3, 5e-4), "seed": (1234, 9)}


def test_data_and_layout_changes_are_never_allowed_under_zero():
    saved = identity_of()
    with pytest.raises(ConfigError, match="data or tokenizer differ"):
        check_resume_identity(saved, identity_of(tokenizer="u" * 64), ["train"], Path("c/step_1"))
    with pytest.raises(ConfigError, match="relaunch with 2 data-parallel ranks"):
        check_resume_identity(saved, identity_of(data_parallel=1), [], Path("c/step_1"))
    zero0 = identity_of(zero_stage=0)
    assert check_resume_identity(
        zero0, identity_of(data_parallel=1, zero_stage=0), [], Path("c")
    ) == {"layout.data_parallel": (2, 1)}


def test_identity_fingerprints_data_by_content(test_corpus):
    from megagrape.data.training_data import resolve_domains

    cfg = load_config(None, [f"data.corpus={test_corpus}"])
    domains = resolve_domains(cfg.data)
    first = make_identity(cfg, "t", domains, {}, 1, 0)
    assert set(first.data["domains"]) == {"code", "legal", "prose"}
    assert all(
        len(d["idx_sha256"]) == 64 and d["tokens"] > 0 for d in first.data["domains"].values()
    )
    assert identity_changes(first, make_identity(cfg, "t", domains, {}, 1, 0)) == {}


# ---------------------------------------------------------------------------- checksums
def make_checkpoint(root: Path, step: int, payload: bytes = b"weights" * 100) -> Path:
    partial = root / f"{ckpt.step_dir_name(step)}.partial"
    partial.mkdir(parents=True)
    (partial / ckpt.STATE_FILE).write_text(json.dumps({"step": step, "padding": "x" * 50}))
    (partial / "mp_rank_00_model_states.pt").write_bytes(payload)
    final = root / ckpt.step_dir_name(step)
    ckpt.finalize_save(partial, final, step, 1, root)
    return final


def flip_byte(path: Path, offset: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x01
    path.write_bytes(bytes(data))  # same size


def test_same_size_damage_of_the_state_file_is_caught_and_the_older_checkpoint_used(tmp_path):
    make_checkpoint(tmp_path, 4)
    newest = make_checkpoint(tmp_path, 8)
    flip_byte(newest / ckpt.STATE_FILE, 12)
    assert "megagrape_state.json is damaged" in ckpt.verify_checkpoint(newest)
    info, notes = ckpt.newest_complete(tmp_path)
    assert info.step == 4
    assert len(notes) == 1 and "step_000008" in notes[0] and "damaged" in notes[0]


def test_same_size_damage_of_a_weights_file_needs_the_deep_check(tmp_path):
    make_checkpoint(tmp_path, 4)
    newest = make_checkpoint(tmp_path, 8)
    flip_byte(newest / "mp_rank_00_model_states.pt", 100)
    assert ckpt.verify_checkpoint(newest) is None  # sizes match: the cheap check cannot see it
    assert "mp_rank_00_model_states.pt is damaged" in ckpt.verify_checkpoint(newest, deep=True)
    assert ckpt.newest_complete(tmp_path, deep=True)[0].step == 4
    marker = json.loads((newest / ckpt.COMPLETE_FILE).read_text())
    assert len(marker["files"]["mp_rank_00_model_states.pt"]["sha256"]) == 64


def test_a_missing_explicit_resume_path_says_so(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        ckpt.resolve_resume(str(tmp_path / "step_000004"), tmp_path)


# ---------------------------------------------------------------------------- TensorBoard
def tensorboard_steps(run_dir: Path, tag: str) -> dict[int, float]:
    accumulator = EventAccumulator(str(run_dir / "tensorboard"), purge_orphaned_data=True)
    accumulator.Reload()
    return {event.step: event.value for event in accumulator.Scalars(tag)}


def write_steps(run_dir: Path, resume_step: int, steps: range, value: float) -> None:
    """One launch's TensorBoard writes. Launches are separate processes started at different
    seconds; event file names carry the second (and an in-process counter that does not sort
    numerically), so wait for the next second as a relaunch would."""
    time.sleep(1.05)
    writer = MetricsWriter(run_dir, enabled=True, resume_step=resume_step)
    for step in steps:
        writer.scalars(step, {"train/loss": value + step})
    writer.close()


def test_a_resume_keeps_the_checkpoint_steps_scalars_and_replaces_the_rest(tmp_path):
    write_steps(tmp_path, 0, range(1, 7), 100.0)  # a run killed after step 6, checkpoint at 4
    write_steps(tmp_path, 4, range(5, 9), 200.0)  # the resumed launch
    assert tensorboard_steps(tmp_path, "train/loss") == {
        1: 101.0,
        2: 102.0,
        3: 103.0,
        4: 104.0,  # the checkpoint step's own scalars survive
        5: 205.0,
        6: 206.0,
        7: 207.0,
        8: 208.0,
    }


def test_relaunching_a_finished_run_or_one_without_checkpoint_writes_nothing_twice(tmp_path):
    write_steps(tmp_path, 0, range(1, 5), 100.0)
    write_steps(tmp_path, 4, range(5, 5), 0.0)  # relaunch of the finished run: no step runs
    assert tensorboard_steps(tmp_path, "train/loss") == {s: 100.0 + s for s in range(1, 5)}
    fresh = tmp_path / "fresh"
    write_steps(fresh, 0, range(1, 4), 100.0)  # killed before its first checkpoint
    write_steps(fresh, 0, range(1, 3), 300.0)  # starts again from nothing
    assert tensorboard_steps(fresh, "train/loss") == {1: 301.0, 2: 302.0}


def test_tensorboard_holds_the_config_and_a_tokens_axis(tmp_path):
    writer = MetricsWriter(tmp_path, enabled=True, config_text="train:\n  lr: 0.001\n")
    writer.scalars(3, {"train/loss": 5.0}, tokens=3 * 512)
    writer.close()
    main = EventAccumulator(str(tmp_path / "tensorboard"))
    main.Reload()
    assert "config/text_summary" in main.Tags()["tensors"]
    text = main.Tensors("config/text_summary")[0].tensor_proto.string_val[0].decode()
    assert "lr: 0.001" in text
    tokens = EventAccumulator(str(tmp_path / "tensorboard" / "vs_tokens"))
    tokens.Reload()
    assert [(e.step, e.value) for e in tokens.Scalars("train/loss")] == [(1536, 5.0)]


def test_wandb_id_is_kept_per_run_directory(tmp_path):
    first = wandb_run_id(tmp_path / "a")
    assert wandb_run_id(tmp_path / "a") == first
    assert wandb_run_id(tmp_path / "b") != first


# ---------------------------------------------------------------------------- divergence
def fake_trainer(max_bad: int = 3, spike: float = 0.0, history: int = 4):
    train = SimpleNamespace(
        divergence_max_bad_steps=max_bad, divergence_spike_factor=spike, divergence_history=history
    )
    return SimpleNamespace(
        cfg=SimpleNamespace(train=train),
        step=0,
        healthy=True,
        is_main=False,
        checkpoint_root=Path("runs/x/checkpoints"),
    )


def feed(
    guard: DivergenceGuard, trainer, losses: list[float], grad_norm: float = 1.0
) -> list[bool]:
    healthy = []
    for loss in losses:
        trainer.step += 1
        guard.on_step_end(trainer, SimpleNamespace(loss=loss, grad_norm=grad_norm))
        healthy.append(trainer.healthy)
    return healthy


def test_non_finite_steps_are_unhealthy_and_stop_the_run_after_the_limit():
    trainer, guard = fake_trainer(max_bad=3), DivergenceGuard()
    guard.on_train_start(trainer)
    assert feed(guard, trainer, [5.0, math.nan, 4.0, math.inf, math.nan]) == [
        True,
        False,
        True,  # a good step resets the count
        False,
        False,
    ]
    with pytest.raises(TrainingDiverged, match=r"3 bad steps in a row \(steps 4-6"):
        feed(guard, trainer, [math.nan])


def test_loss_spikes_against_the_recent_good_mean_and_nonfinite_grad_norm_count():
    trainer, guard = fake_trainer(max_bad=0, spike=3.0, history=4), DivergenceGuard()
    guard.on_train_start(trainer)
    assert feed(guard, trainer, [9.0, 2.0, 2.0, 2.0]) == [True] * 4  # the first has no history
    assert feed(guard, trainer, [7.0, 100.0, 3.0]) == [True, False, True]
    # the window keeps the last 4 good losses (2, 2, 7, 3): 9 has left it
    assert feed(guard, trainer, [10.0, 60.0]) == [True, False]  # 10 < 3 x 3.5; 60 > 3 x 5.5
    assert feed(guard, trainer, [3.0], grad_norm=math.nan) == [False]
    assert feed(guard, trainer, [math.nan] * 10) == [False] * 10  # max_bad 0: never stops
