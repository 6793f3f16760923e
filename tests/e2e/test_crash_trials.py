"""The crash-trial harness itself (slow): two trials on the test corpus end identical to the
uninterrupted run, finished trials are not rerun, and an induced difference is reported."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from megagrape.experiments.crash_trials import KILL_KINDS, TrialSetup, compare_runs, run_trials


@pytest.mark.slow
def test_two_crash_trials_are_identical_and_a_changed_model_is_caught(test_corpus, tmp_path):
    setup = TrialSetup(corpus=test_corpus, out=tmp_path, train_iters=12, checkpoint_interval=4)
    summary = run_trials(setup, trials=2)
    assert summary["trials"] == 2 and summary["identical"] == 2, summary["failures"]
    records = [json.loads((tmp_path / f"trial_{t:03d}.json").read_text()) for t in (1, 2)]
    assert all(len(r["exit_codes"]) == len(r["kills"]) >= 1 for r in records)
    assert all(code != 0 for r in records for code in r["exit_codes"]), "every kill must land"
    assert all(k["kind"] in KILL_KINDS and 1 <= k["step"] < 12 for r in records for k in r["kills"])
    before = (tmp_path / "trial_001.json").stat().st_mtime_ns
    assert run_trials(setup, trials=2)["identical"] == 2  # resumed series: nothing rerun
    assert (tmp_path / "trial_001.json").stat().st_mtime_ns == before

    reference = setup.run_dir("reference")
    copy = tmp_path / "copy"
    shutil.copytree(reference, copy)
    model = copy / "checkpoints" / "step_000012" / "mp_rank_00_model_states.pt"
    saved = torch.load(model, map_location="cpu", weights_only=False)  # written by this test
    name = next(k for k, v in saved["module"].items() if torch.is_tensor(v))
    saved["module"][name] = saved["module"][name] + 1
    torch.save(saved, model)
    assert compare_runs(copy, reference, 12) == [f"final model: {name}"]
