"""DoReMi: exponentiated step on excess losses, smoothing, absent domains keep their λ."""

import json
import math

import numpy as np
import pytest
import torch

from megagrape.mixture import Observation, build_method

DOMAINS = ["web", "code", "books"]
NAN = float("nan")


def doremi(**options):
    return build_method("doremi", options, DOMAINS, [], None, None)


def observe(excess):
    return Observation(
        step=1, lr=1e-3, domain_excess_losses=torch.tensor(excess, dtype=torch.float64)
    )


def reference(alpha, excess, eta, c):
    logits = np.log(alpha) + eta * np.asarray(excess)
    new = np.exp(logits - logits.max())
    new /= new.sum()
    return (1 - c) * new + c / len(new)


def test_one_update_by_hand():
    update = build_method(
        "doremi", {"eta": 1.0, "smoothing": 0.0}, ["a", "b"], [], None, None
    ).update(
        Observation(
            step=1,
            lr=1.0,
            domain_excess_losses=torch.tensor([math.log(3.0), 0.0], dtype=torch.float64),
        )
    )
    # α ∝ (1/2 * 3, 1/2 * 1) -> (3/4, 1/4)
    assert update.domain_weights.tolist() == pytest.approx([0.75, 0.25], rel=1e-14)


def test_two_step_trajectory_with_an_absent_domain():
    method = doremi(eta=0.5, smoothing=1e-3)
    first, second = [0.4, 0.1, 0.7], [NAN, 0.3, 0.2]
    alpha = reference(np.full(3, 1 / 3), first, 0.5, 1e-3)
    update = method.update(observe(first))
    np.testing.assert_allclose(update.domain_weights.numpy(), alpha, rtol=1e-14)
    update = method.update(observe(second))
    # "web" was absent: it keeps its previous excess loss 0.4.
    alpha = reference(alpha, [0.4, 0.3, 0.2], 0.5, 1e-3)
    np.testing.assert_allclose(update.domain_weights.numpy(), alpha, rtol=1e-14)
    assert update.diagnostics["excess_losses"] == pytest.approx([0.4, 0.3, 0.2])
    assert update.diagnostics["absent_domains"] == 1.0


def test_domain_absent_before_first_sight_counts_as_zero():
    update = doremi(smoothing=0.0).update(observe([NAN, 1.0, 1.0]))
    e = math.e
    assert update.domain_weights.tolist() == pytest.approx(
        [1 / (1 + 2 * e), e / (1 + 2 * e), e / (1 + 2 * e)]
    )


def test_infinite_excess_loss_skips():
    update = doremi().update(observe([0.1, float("inf"), 0.2]))
    assert "k=1" in update.skipped and "'code'" in update.skipped
    assert update.domain_weights.tolist() == [1 / 3] * 3


def test_state_round_trip_gives_identical_next_update():
    method = doremi()
    method.update(observe([0.4, 0.1, 0.7]))
    resumed = doremi()
    resumed.load_state_dict(json.loads(json.dumps(method.state_dict())))
    a, b = method.update(observe([NAN, 0.2, 0.1])), resumed.update(observe([NAN, 0.2, 0.1]))
    assert torch.equal(a.domain_weights, b.domain_weights)
