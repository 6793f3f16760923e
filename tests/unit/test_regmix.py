"""RegMix: the mixture sampler's rules, the regressors, the search, and a tiny real proxy run."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

from megagrape.errors import ConfigError
from megagrape.experiments import regmix
from megagrape.experiments.regmix_proxies import objective_value, plan_proxies

PRIOR = np.array([0.55, 0.25, 0.12, 0.06, 0.02])
REPO = Path(__file__).resolve().parents[2]


def test_sampler_respects_bounds_rounding_and_uniqueness():
    settings = regmix.SamplerSettings()
    mixtures = regmix.sample_mixtures(PRIOR, 64, np.random.default_rng(0), settings)
    assert mixtures.shape == (64, 5)
    assert np.allclose(mixtures.sum(axis=1), 1.0, atol=1e-12)
    assert np.all(mixtures >= 0)
    nonzero = mixtures[mixtures > 0]
    assert nonzero.min() >= settings.minimum * 0.99  # zeroed below the minimum
    bounds = np.minimum(PRIOR * settings.max_usage, 1.0)
    assert np.all(mixtures <= bounds + 2 * settings.minimum)
    assert len(np.unique(np.round(mixtures / settings.minimum), axis=0)) == 64
    again = regmix.sample_mixtures(PRIOR, 64, np.random.default_rng(0), settings)
    other = regmix.sample_mixtures(PRIOR, 64, np.random.default_rng(1), settings)
    assert np.array_equal(mixtures, again) and not np.array_equal(mixtures, other)


def test_usage_bound_rejects_draws_and_sharpening_flattens_the_prior():
    tight = regmix.SamplerSettings(max_usage=1.5)
    mixtures = regmix.sample_mixtures(PRIOR, 40, np.random.default_rng(3), tight)
    assert np.all(mixtures <= np.minimum(1.5 * PRIOR, 1.0) + 2 * tight.minimum)
    loose = regmix.sample_mixtures(PRIOR, 40, np.random.default_rng(3), regmix.SamplerSettings())
    assert (
        loose[:, 4].max() > 1.5 * PRIOR[4]
    )  # without the tight bound the small domain goes higher
    flat = regmix.sharpened(PRIOR, 0.5)
    assert flat[4] / flat[0] == pytest.approx(np.sqrt(PRIOR[4] / PRIOR[0]))
    assert np.allclose(regmix.sharpened(PRIOR, 1.0), PRIOR / PRIOR.sum())
    grid = regmix.SamplerSettings().strength_grid()
    assert len(grid) == 15 and grid[0] == pytest.approx(0.1) and grid[-1] == pytest.approx(5.0)


def test_sampler_says_when_too_few_mixtures_survive():
    coarse = regmix.SamplerSettings(minimum=0.25, max_usage=100.0)
    with pytest.raises(ValueError, match="distinct mixtures"):
        regmix.sample_mixtures([0.5, 0.5], 10, np.random.default_rng(0), coarse)
    with pytest.raises(ValueError, match="positive"):
        regmix.sample_mixtures([0.5, 0.0, 0.5], 3, np.random.default_rng(0))


def dirichlet(count: int, k: int, seed: int, strength: float = 2.0) -> np.ndarray:
    return np.random.default_rng(seed).dirichlet(np.full(k, strength), size=count)


def test_ridge_recovers_a_linear_function_on_the_simplex():
    x, x_new = dirichlet(60, 4, 0), dirichlet(200, 4, 1)
    beta = np.array([3.0, 1.0, -2.0, 0.5])

    def truth(w):
        return 4.0 + w @ beta

    model = regmix.RidgeRegressor(features="linear").fit(x, truth(x))
    assert np.abs(model.predict(x_new) - truth(x_new)).max() < 1e-3
    assert model.loo_rmse < 1e-3
    assert regmix.spearman(model.loo_predictions, truth(x)) > 0.999


def test_ridge_recovers_a_quadratic_function_and_ignores_noise_level_detail():
    x, x_new = dirichlet(120, 3, 2), dirichlet(300, 3, 3)
    centre = np.array([0.5, 0.3, 0.2])

    def truth(w):
        d = w - centre
        return 2.0 + 5.0 * (d**2).sum(axis=1) + 3.0 * d[:, 0] * d[:, 1]

    model = regmix.RidgeRegressor(features="quadratic").fit(x, truth(x))
    assert np.abs(model.predict(x_new) - truth(x_new)).max() < 1e-3
    linear = regmix.RidgeRegressor(features="linear").fit(x, truth(x))
    assert linear.loo_rmse > 10 * model.loo_rmse  # a linear model cannot fit the bowl
    noisy_y = truth(x) + np.random.default_rng(4).normal(0, 0.01, len(x))
    noisy = regmix.RidgeRegressor(features="quadratic").fit(x, noisy_y)
    assert np.abs(noisy.predict(x_new) - truth(x_new)).mean() < 0.01


def test_fit_regressor_choices():
    x = dirichlet(20, 3, 5)
    y = x @ np.array([1.0, 2.0, 3.0])
    if not regmix.lightgbm_available():
        assert isinstance(regmix.fit_regressor(x, y), regmix.RidgeRegressor)
        with pytest.raises(ValueError, match="not importable"):
            regmix.fit_regressor(x, y, kind="lightgbm")
    with pytest.raises(ValueError, match="unknown regressor"):
        regmix.fit_regressor(x, y, kind="forest")
    with pytest.raises(ValueError, match=">= 3"):
        regmix.RidgeRegressor().fit(x[:2], y[:2])


class Bowl:
    """A known loss surface with its minimum at ``centre``."""

    def __init__(self, centre):
        self.centre = np.asarray(centre)

    def predict(self, w):
        return ((np.asarray(w) - self.centre) ** 2).sum(axis=1)


def test_search_returns_the_planted_optimum():
    centre = [0.6, 0.25, 0.1, 0.05]
    result = regmix.search_mixture(
        Bowl(centre), [0.25] * 4, np.random.default_rng(0), samples=40_000, top_k=32, strength=4.0
    )
    assert result.weights.sum() == pytest.approx(1.0)
    assert np.abs(result.weights - centre).max() < 0.03
    assert result.predicted < 1e-3
    assert np.all(np.diff(result.top_predicted) >= 0) and len(result.top_predicted) == 32


def test_fitted_model_then_search_finds_the_planted_optimum():
    centre = np.array([0.2, 0.5, 0.3])
    x = dirichlet(80, 3, 6)
    y = 1.0 + ((x - centre) ** 2).sum(axis=1)
    model = regmix.fit_regressor(x, y, kind="ridge", features="quadratic")
    result = regmix.search_mixture(model, [1 / 3] * 3, np.random.default_rng(1), 20_000, 16, 4.0)
    assert np.abs(result.weights - centre).max() < 0.03


def test_objective_values():
    final = {"a": {"loss": 3.0, "acc": 0.2}, "b": {"loss": 5.0, "acc": 0.4}}
    assert objective_value(final, "mean") == 4.0
    assert objective_value(final, "worst") == 5.0
    assert objective_value(final, "a") == 3.0
    with pytest.raises(ConfigError, match="choose mean, worst or a target"):
        objective_value(final, "c")


def test_proxy_jobs_are_static_inline_mixtures(test_corpus, tmp_path):
    mixtures = np.array([[0.5, 0.3, 0.2], [0.1, 0.1, 0.8]])
    plan = plan_proxies(
        mixtures=mixtures,
        domains=["code", "legal", "prose"],
        token_counts=[1, 1, 1],
        corpus=test_corpus,
        out=tmp_path,
        scale="smoke",
        train_iters=6,
        warmup_iters=1,
    )
    cfg = plan.jobs[1].config()
    assert cfg.mixture.method == "static"
    assert cfg.mixture.options["weights"] == [0.1, 0.1, 0.8]
    assert cfg.train.train_iters == 6 and cfg.train.lr_decay_style == "constant"
    assert cfg.targets.eval_split == "signal"  # never chooses on the items a benchmark reports
    assert cfg.targets.eval_interval == 6
    same = plan_proxies(
        mixtures=mixtures,
        domains=["code", "legal", "prose"],
        token_counts=[1, 1, 1],
        corpus=test_corpus,
        out=tmp_path,
        scale="smoke",
        train_iters=6,
        warmup_iters=1,
    )
    assert [j.fingerprint() for j in plan.jobs] == [j.fingerprint() for j in same.jobs]
    with pytest.raises(ValueError, match="do not match"):
        plan_proxies(
            mixtures=mixtures[:, :2],
            domains=["code", "legal", "prose"],
            token_counts=[1, 1, 1],
            corpus=test_corpus,
            out=tmp_path,
        )


def test_regmix_tool_end_to_end_and_resume(test_corpus, tmp_path, capsys):
    """Four proxies of 4 steps on the test corpus, a ridge fit, a search, then a rerun that
    retrains nothing and writes the same weights."""
    sys.path.insert(0, str(REPO / "tools"))
    try:
        import regmix as regmix_tool
    finally:
        sys.path.pop(0)
    argv = [
        "--corpus",
        str(test_corpus),
        "--out",
        str(tmp_path / "rm"),
        "--scale",
        "smoke",
        "--proxies",
        "4",
        "--proxy-iters",
        "4",
        "--warmup-iters",
        "1",
        "--parallel",
        "1",
        "--samples",
        "2000",
        "--top-k",
        "16",
        "--minimum",
        "0.01",
        "--quiet",
    ]
    assert regmix_tool.main(argv) == 0
    weights_path = tmp_path / "rm" / "regmix_weights.json"
    first = json.loads(weights_path.read_text())
    assert set(first["domain_weights"]) == {"code", "legal", "prose"}
    assert sum(first["domain_weights"].values()) == pytest.approx(1.0)
    summary = json.loads((tmp_path / "rm" / "regmix.json").read_text())
    assert len(summary["losses"]) == 4 and all(np.isfinite(summary["losses"]))
    stamps = {p.name: p.stat().st_mtime_ns for p in (tmp_path / "rm" / "results").iterdir()}
    capsys.readouterr()
    assert regmix_tool.main(argv) == 0
    assert {p.name: p.stat().st_mtime_ns for p in (tmp_path / "rm" / "results").iterdir()} == stamps
    assert json.loads(weights_path.read_text()) == first
    from megagrape.mixture.static import load_weights_file

    loaded = load_weights_file(weights_path, ["code", "legal", "prose"])
    assert loaded.sum().item() == pytest.approx(1.0)
