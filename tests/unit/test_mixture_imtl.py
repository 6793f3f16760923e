"""IMTL-G: weights from the Gram only, equal projections, clipping of negative weights."""

import json

import numpy as np
import pytest
import torch

from megagrape.mixture import Observation, build_method

F64 = torch.float64


def imtl(k=3, **options):
    return build_method("imtl", options, [f"d{i}" for i in range(k)], [], None, None)


def observe(vectors):
    g = np.asarray(vectors, dtype=np.float64)
    return Observation(step=1, lr=1e-3, domain_gram=torch.tensor(g @ g.T, dtype=F64))


def libmtl_imtl(vectors):
    """IMTL-G from explicit vectors: a_{2:K} = g_1 Uᵀ (D Uᵀ)^-1, a_1 = 1 - sum (LibMTL's form)."""
    g = np.asarray(vectors, dtype=np.float64)
    u = g / np.linalg.norm(g, axis=1, keepdims=True)
    d, diff = g[0] - g[1:], u[0] - u[1:]
    tail = g[0] @ diff.T @ np.linalg.inv(d @ diff.T)
    return np.concatenate([[1 - tail.sum()], tail])


def test_two_domains_weights_are_inverse_norms():
    # For K = 2 the closed form reduces to a ∝ (||g2||, ||g1||).
    update = imtl(k=2).update(observe([[3.0, 0.0], [1.0, 1.0]]))
    n1, n2 = 3.0, np.sqrt(2.0)
    assert update.domain_weights.tolist() == pytest.approx(
        [n2 / (n1 + n2), n1 / (n1 + n2)], rel=1e-14
    )


def test_two_events_match_explicit_vectors_and_equalise_projections():
    rng = np.random.default_rng(0)
    method = imtl(k=4)
    for _ in range(2):
        vectors = rng.normal(size=(4, 7)) + 1.0
        update = method.update(observe(vectors))
        raw = libmtl_imtl(vectors)
        np.testing.assert_allclose(update.diagnostics["raw_weights"], raw, rtol=1e-9)
        if (raw >= 0).all():
            np.testing.assert_allclose(update.domain_weights.numpy(), raw, rtol=1e-9)
        direction = raw @ vectors
        projections = vectors @ direction / np.linalg.norm(vectors, axis=1)
        np.testing.assert_allclose(projections, projections[0], rtol=1e-9)


def test_negative_weights_are_clipped_renormalised_and_reported():
    vectors = [[1.0, 0.0], [0.0, 1.0], [3.0, 0.2]]
    raw = libmtl_imtl(vectors)  # (15/11, 1/11, -5/11)
    update = imtl().update(observe(vectors))
    assert update.diagnostics["clipped_count"] == 1.0
    assert update.diagnostics["clipped_values"] == pytest.approx([raw[2]])
    assert update.domain_weights.tolist() == pytest.approx(
        [raw[0] / (raw[0] + raw[1]), raw[1] / (raw[0] + raw[1]), 0.0]
    )


def test_smoothing():
    update = imtl(k=2, eps=0.5).update(observe([[1.0, 0.0], [0.0, 1.0]]))
    assert update.domain_weights.tolist() == pytest.approx([0.5, 0.5])
    update = imtl(k=2, eps=0.2).update(observe([[3.0, 0.0], [0.0, 1.0]]))
    assert update.domain_weights.tolist() == pytest.approx([0.8 * 0.25 + 0.1, 0.8 * 0.75 + 0.1])


def test_zero_gradient_and_nan_skip():
    update = imtl().update(observe([[1.0, 0.0], [0.0, 0.0], [1.0, 1.0]]))
    assert "domain 1 ('d1')" in update.skipped and update.domain_weights.tolist() == [1 / 3] * 3
    nan = observe(np.eye(3))
    nan.domain_gram[1, 1] = float("nan")
    assert "(k=1, j=1)" in imtl().update(nan).skipped


def test_state_round_trip_gives_identical_next_update():
    method = imtl()
    method.update(observe(np.eye(3) + 0.1))
    resumed = imtl()
    resumed.load_state_dict(json.loads(json.dumps(method.state_dict())))
    vectors = [[1.0, 0.2], [0.1, 1.0], [0.5, 0.7]]
    assert torch.equal(
        method.update(observe(vectors)).domain_weights,
        resumed.update(observe(vectors)).domain_weights,
    )
