"""mixture.apply: loss end to end: a tiny CPU run of ODM sampling by a fixed s while its α moves.

Each domain's loss must be weighted by α_k / s_k with the α in effect at that step, the sampler
must keep drawing by s, and the bandit must importance-weight its rewards by s (the probability
the domains were actually drawn with), not by α.
"""

from __future__ import annotations

import json

import numpy as np

from megagrape.train.train_module import EngineTrainModule
from tests.run_utils import one_process_group, tiny_config, train_in_process

SAMPLING = {"code": 0.5, "prose": 0.3, "legal": 0.2}


def test_odm_under_apply_loss_samples_by_s_and_weights_losses_by_alpha_over_s(
    test_corpus, tmp_path, monkeypatch
):
    sampling_file = tmp_path / "sampling.json"
    sampling_file.write_text(json.dumps(SAMPLING))
    cfg = tiny_config(
        test_corpus,
        tmp_path,
        "apply_loss",
        "mixture.method=odm",
        "mixture.apply=loss",
        f"mixture.sampling={sampling_file}",
        "mixture.interval=2",
        "train.train_iters=12",
    )
    steps = []
    original = EngineTrainModule.train_batch

    def recording(self, micro_batches, datasets, domain_loss_weights, hooks):
        steps.append(
            {
                "loss_weights": domain_loss_weights.double().numpy().copy(),
                "alpha": hooks.method.domain_weights.numpy().copy(),
                "sampler": np.asarray(hooks.sampler.current_weights, dtype=np.float64).copy(),
                "domains": np.concatenate(
                    [m.domain_ids[m.loss_weights > 0] for m in micro_batches]
                ),
            }
        )
        return original(self, micro_batches, datasets, domain_loss_weights, hooks)

    monkeypatch.setattr(EngineTrainModule, "train_batch", recording)
    with one_process_group(seed=cfg.seed) as env:
        trainer, summary = train_in_process(cfg, "configs/ds/zero0.json", env)
    names = trainer.mixture.data.domain_names
    s = np.array([SAMPLING[name] for name in names])

    assert summary["step"] == 12 and len(steps) == 12
    alphas = np.array([step["alpha"] for step in steps])
    # α moved (ODM's exploration rate drops below 1/K from step 4 on) and ends away from s.
    assert np.abs(alphas[-1] - alphas[0]).max() > 1e-3
    assert np.abs(alphas[-1] - s).max() > 1e-2
    for step in steps:
        np.testing.assert_allclose(step["sampler"], s, rtol=0, atol=1e-15)  # never re-weighted
        np.testing.assert_allclose(step["loss_weights"], step["alpha"] / s, rtol=1e-12)
    # The sampler really drew by s: Megatron's greedy rule keeps every count within 1 of s * n.
    drawn = np.bincount(np.concatenate([step["domains"] for step in steps]), minlength=len(s))
    assert np.all(np.abs(drawn - s * drawn.sum()) <= 1.0), (drawn, s)
    # The bandit saw the sampling distribution, so its rewards are divided by s, not by α.
    observed = trainer.mixture.last_observation.sampling_weights
    np.testing.assert_allclose(observed.numpy(), s, rtol=0, atol=1e-15)
    events = [
        json.loads(line)
        for line in (tmp_path / "apply_loss" / "mixture.jsonl").read_text().splitlines()
    ]
    applied = [e for e in events if not e.get("initial")]
    assert len(applied) == 6 and not any(e.get("skipped") for e in applied)
