"""The training engine in real processes over gloo: ZeRO 0-3, TP=2, PP=2, exact resume, outputs."""

from __future__ import annotations

import json

import numpy as np
import pytest

from tests.dist_utils import run_distributed
from tests.run_utils import tiny_config, train_in_process

ZERO_CONFIGS = [
    "configs/ds/zero0.json",
    "configs/ds/zero1.json",
    "configs/ds/zero2.json",
    "configs/ds/zero3.json",
]


def falls(losses: list[float]) -> bool:
    return np.mean(losses[-3:]) < np.mean(losses[:3]) - 0.3


def _zero_stages(rank, world_size, corpus, out):
    from megagrape import parallel

    cfg0 = tiny_config(corpus, out, "zero")
    env = parallel.init_distributed(cfg0.parallel, cfg0.seed)
    histories = {}
    for path in ZERO_CONFIGS:
        cfg = tiny_config(corpus, out, f"zero_{path[-6]}")
        _trainer, summary = train_in_process(cfg, path, env)
        histories[path] = summary["history"]["loss"]
    parallel.destroy_distributed()
    return histories


def test_zero_stages_with_two_data_parallel_ranks(test_corpus, tmp_path):
    results = run_distributed(_zero_stages, 2, args=(test_corpus, tmp_path))
    for path in ZERO_CONFIGS:
        losses = results[0][path]
        assert losses == results[1][path], f"{path}: ranks report different losses"
        assert len(losses) == 12
        assert falls(losses), f"{path}: loss did not fall: {losses}"
    # ZeRO changes where optimizer state lives, not the maths: trajectories agree closely.
    first = np.array(results[0][ZERO_CONFIGS[0]])
    for path in ZERO_CONFIGS[1:]:
        np.testing.assert_allclose(results[0][path], first, rtol=2e-3)


def _parallel_run(rank, world_size, corpus, out, overrides):
    from megagrape import parallel
    from megagrape.train.callbacks.evaluation import evaluate_targets

    cfg = tiny_config(corpus, out, "par", *overrides)
    env = parallel.init_distributed(cfg.parallel, cfg.seed)
    trainer, summary = train_in_process(cfg, "configs/ds/zero1.json", env)
    alpha = trainer.mixture.method.domain_weights.tolist()
    trainer.cfg.targets.eval_mode = "loss"
    gold_only = evaluate_targets(trainer, final=False)
    parallel.destroy_distributed()
    return {
        "loss": summary["history"]["loss"],
        "eval": summary["eval"],
        "alpha": alpha,
        "gold_only": gold_only,
    }


@pytest.mark.parametrize(
    "overrides",
    [
        ("parallel.tensor_parallel=2", "targets.eval_interval=12"),
        ("parallel.pipeline_parallel=2", "targets.eval_interval=12"),
    ],
    ids=["tp2", "pp2"],
)
def test_model_parallel_trains(test_corpus, tmp_path, overrides):
    results = run_distributed(_parallel_run, 2, args=(test_corpus, tmp_path, overrides))
    assert results[0]["loss"] == results[1]["loss"]
    assert falls(results[0]["loss"]), results[0]["loss"]
    evals = results[0]["eval"]
    assert set(evals) == {"prose_cloze", "legal_cloze"}
    assert all(0.0 <= scores["acc"] <= 1.0 for scores in evals.values())
    assert evals == results[1]["eval"]
    for task, scores in results[0]["gold_only"].items():  # eval_mode=loss scores only gold answers
        assert set(scores) == {"loss"}
        assert scores["loss"] == pytest.approx(evals[task]["loss"], rel=1e-9)


def _grape_run(rank, world_size, corpus, out, name, overrides, ds_path="configs/ds/zero1.json"):
    from megagrape import parallel

    cfg = tiny_config(
        corpus,
        out,
        name,
        "mixture.method=grape",
        "mixture.interval=2",
        "mixture.options={mu_a: 20.0, mu_z: 20.0}",
        "train.train_iters=12",
        "checkpoint.interval=4",
        *overrides,
    )
    env = parallel.init_distributed(cfg.parallel, cfg.seed)
    trainer, summary = train_in_process(cfg, ds_path, env)
    parallel.destroy_distributed()
    return {
        "loss": summary["history"]["loss"],
        "step": summary["step"],
        "alpha": trainer.mixture.method.domain_weights.tolist(),
        "capture_mode": trainer.mixture.capture.mode,
    }


def test_exact_resume_reproduces_losses_and_weights(test_corpus, tmp_path):
    full = run_distributed(_grape_run, 2, args=(test_corpus, tmp_path, "full", ()))
    first = run_distributed(
        _grape_run, 2, args=(test_corpus, tmp_path, "split", ("train.exit_interval=6",))
    )
    assert first[0]["step"] == 6
    second = run_distributed(_grape_run, 2, args=(test_corpus, tmp_path, "split", ()))
    assert second[0]["step"] == 12
    assert first[0]["loss"] + second[0]["loss"] == full[0]["loss"], (
        "resumed losses differ (bit-exact on CPU)"
    )
    assert second[0]["alpha"] == full[0]["alpha"]
    assert full[0]["alpha"] == full[1]["alpha"]
    full_events = [
        json.loads(line) for line in (tmp_path / "full" / "mixture.jsonl").read_text().splitlines()
    ]
    split_events = [
        json.loads(line) for line in (tmp_path / "split" / "mixture.jsonl").read_text().splitlines()
    ]
    assert [e["domain_weights"] for e in split_events] == [e["domain_weights"] for e in full_events]
    assert [e["task_weights"] for e in split_events] == [e["task_weights"] for e in full_events]
    assert len(full_events) == 7  # the initial weights, then one record per event
    assert full_events[0]["initial"] and full_events[0]["step"] == 0
    assert set(full_events[0]["domain_weights"].values()) == {1 / 3}
    assert [e["step"] for e in full_events[1:]] == [2, 4, 6, 8, 10, 12]
    gram = full_events[1]["domain_target_gram"]
    assert set(gram) == {"code", "legal", "prose"}
    assert set(gram["code"]) == {"legal_cloze", "prose_cloze"}
    assert set(full_events[1]["target_losses"]) == {"legal_cloze", "prose_cloze"}
    assert set(full_events[1]["diagnostics"]["domain_scores"]) == {"code", "legal", "prose"}
    assert set(full_events[1]["diagnostics"]["roi"]) == {"legal_cloze", "prose_cloze"}
    assert full_events[1]["method"] == "grape" and full_events[1]["time"].endswith("+00:00")
    uniform = 1.0 / len(full_events[-1]["domain_weights"])
    assert max(abs(w - uniform) for w in full_events[-1]["domain_weights"].values()) > 1e-3
    assert (tmp_path / "split" / "config.yaml").is_file()
    assert (
        tmp_path / "split" / "plots" / "mixture.png"
    ).stat().st_size > 10_000  # drawn by the run
    assert list((tmp_path / "split" / "tensorboard").glob("events.out.tfevents.*"))
    checkpoints = sorted(
        p.name for p in (tmp_path / "split" / "checkpoints").iterdir() if p.is_dir()
    )
    assert checkpoints == ["step_000008", "step_000012"], "keep_last=2 retention"


@pytest.mark.parametrize(
    ("ds_path", "layout", "mode"),
    [
        ("configs/ds/zero1.json", ("parallel.pipeline_parallel=2",), "pipeline"),
        ("configs/ds/zero3.json", (), "partitioned"),
    ],
    ids=["pp2", "zero3-dp2"],
)
def test_grape_trains_and_resumes_exactly_on_large_model_layouts(
    test_corpus, tmp_path, ds_path, layout, mode
):
    """GRAPE's events under pipeline parallelism and ZeRO-3: an interrupted run continues
    bit-exactly, and the mixture moves."""
    overrides = ("train.train_iters=8", *layout)
    full = run_distributed(_grape_run, 2, args=(test_corpus, tmp_path, "full", overrides, ds_path))
    first = run_distributed(
        _grape_run,
        2,
        args=(test_corpus, tmp_path, "split", (*overrides, "train.exit_interval=4"), ds_path),
    )
    second = run_distributed(
        _grape_run, 2, args=(test_corpus, tmp_path, "split", overrides, ds_path)
    )
    assert full[0]["capture_mode"] == mode
    assert (first[0]["step"], second[0]["step"]) == (4, 8)
    assert first[0]["loss"] + second[0]["loss"] == full[0]["loss"]
    assert second[0]["alpha"] == full[0]["alpha"] == full[1]["alpha"]
    assert max(abs(w - 1 / 3) for w in full[0]["alpha"]) > 1e-3
    events = (tmp_path / "full" / "mixture.jsonl").read_text().splitlines()
    assert [json.loads(line)["step"] for line in events[1:]] == [2, 4, 6, 8]


def _static_run(rank, world_size, corpus, out, name, overrides):
    from megagrape import parallel

    cfg = tiny_config(corpus, out, name, "checkpoint.interval=6", *overrides)
    env = parallel.init_distributed(cfg.parallel, cfg.seed)
    trainer, summary = train_in_process(cfg, "configs/ds/zero0.json", env)
    state = trainer.mixture.sampler.state_dict()
    parallel.destroy_distributed()
    return {"loss": summary["history"]["loss"], "step": summary["step"], "sampler": state}


def test_resume_at_a_different_data_parallel_size_continues_the_stream(test_corpus, tmp_path):
    full = run_distributed(_static_run, 2, args=(test_corpus, tmp_path, "dp2", ()))
    first = run_distributed(
        _static_run, 2, args=(test_corpus, tmp_path, "dpchange", ("train.exit_interval=6",))
    )
    assert first[0]["step"] == 6
    resumed = run_distributed(_static_run, 1, args=(test_corpus, tmp_path, "dpchange", ()))[0]
    assert resumed["step"] == 12
    assert resumed["sampler"]["consumed_samples"] == full[0]["sampler"]["consumed_samples"] == 96
    assert resumed["sampler"]["segments"] == full[0]["sampler"]["segments"]
    # Same samples at the same steps with one rank instead of two: the same losses up to the
    # order of floating-point sums.
    np.testing.assert_allclose(first[0]["loss"] + resumed["loss"], full[0]["loss"], rtol=1e-4)


def _with_recording_callback(rank, world_size, corpus, out):
    from megagrape import parallel
    from megagrape.ds_config import read_ds_config, resolve_ds_config
    from megagrape.train import build_trainer
    from megagrape.train.callbacks import Callback, default_callbacks

    class Recorder(Callback):
        """A behaviour added from outside: the loop is not edited to call it."""

        def __init__(self) -> None:
            self.calls: list[tuple] = []

        def on_train_start(self, trainer) -> None:
            self.calls.append(("start", trainer.step))

        def on_step_end(self, trainer, record) -> None:
            self.calls.append(("step", trainer.step, trainer.done, round(record.loss, 6)))

        def on_event(self, trainer, event) -> None:
            self.calls.append(("event", event.step, sorted(event.update.domain_weights.tolist())))

        def on_train_end(self, trainer) -> None:
            self.calls.append(("end", trainer.step))

    cfg = tiny_config(
        corpus, out, "cb", "mixture.method=odm", "mixture.interval=3", "train.train_iters=6"
    )
    env = parallel.init_distributed(cfg.parallel, cfg.seed)
    ds = resolve_ds_config(
        read_ds_config("configs/ds/zero0.json"), cfg, env.world_size, env.device, pipeline=False
    )
    recorder = Recorder()
    summary = build_trainer(cfg, ds, env, callbacks=[*default_callbacks(), recorder]).train()
    parallel.destroy_distributed()
    return {"calls": recorder.calls, "loss": summary["history"]["loss"]}


def test_a_new_callback_sees_every_step_and_event_without_editing_the_loop(test_corpus, tmp_path):
    result = run_distributed(_with_recording_callback, 1, args=(test_corpus, tmp_path))[0]
    calls = result["calls"]
    assert calls[0] == ("start", 0) and calls[-1] == ("end", 6)
    steps = [c for c in calls if c[0] == "step"]
    assert [c[1] for c in steps] == [1, 2, 3, 4, 5, 6]
    assert [c[2] for c in steps] == [False] * 5 + [True]
    assert [c[3] for c in steps] == [round(x, 6) for x in result["loss"]]
    events = [c for c in calls if c[0] == "event"]
    assert [e[1] for e in events] == [3, 6]
    # an event is reported inside its step, before that step's on_step_end
    assert calls.index(events[0]) == calls.index(steps[2]) - 1


def _save_fails_on_one_rank(rank, world_size, corpus, out):
    import errno

    from megagrape import parallel
    from megagrape.ds_config import read_ds_config, resolve_ds_config
    from megagrape.errors import CheckpointSaveError
    from megagrape.train import build_trainer
    from megagrape.train import checkpoint as ckpt

    cfg = tiny_config(corpus, out, "full_disk", "train.train_iters=2", "checkpoint.interval=2")
    env = parallel.init_distributed(cfg.parallel, cfg.seed)
    ds = resolve_ds_config(
        read_ds_config("configs/ds/zero1.json"), cfg, env.world_size, env.device, pipeline=False
    )
    trainer = build_trainer(cfg, ds, env)
    trainer.train()  # writes step_000002

    def no_space(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    if rank == 0:  # megagrape's own state file, written after DeepSpeed's files
        ckpt.write_json_atomic = no_space
    trainer.step = 3
    try:
        trainer.save_checkpoint()
        message = None
    except CheckpointSaveError as err:
        message = str(err)
    root = trainer.checkpoint_root
    older = ckpt.verify_checkpoint(root / "step_000002", deep=True)
    parallel.destroy_distributed()
    return {
        "message": message,
        "partial_left": (root / "step_000003.partial").exists(),
        "older": older,
        "names": sorted(p.name for p in root.iterdir()),
    }


def test_a_save_that_fails_on_rank_0_fails_on_every_rank_and_keeps_older_checkpoints(
    test_corpus, tmp_path
):
    results = run_distributed(_save_fails_on_one_rank, 2, args=(test_corpus, tmp_path))
    for result in results:
        assert result["message"] is not None, "every rank must raise, not hang or go on"
        assert "rank 0: OSError: [Errno 28] No space left on device" in result["message"]
        assert "older checkpoints are kept" in result["message"]
        assert not result["partial_left"]
        assert result["older"] is None, "the older checkpoint must still verify (sha256 included)"
    assert "step_000002" in results[0]["names"] and "step_000003" not in results[0]["names"]
