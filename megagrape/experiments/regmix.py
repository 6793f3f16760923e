"""RegMix (sail-sg/regmix): sample mixtures, fit mixture -> target loss, search the best mixture.

The workflow (tools/regmix.py runs it on the engine):

1. ``sample_mixtures``: K-dimensional mixtures drawn the way RegMix's
   ``mixture_config/synthesize_mixture.py`` draws them, from the prior p = the domains' token
   shares:

   * the bound of domain k is ``min(max_usage * p_k, 1)`` (computed on p before sharpening);
   * p is sharpened to p^temperature / sum (temperature 0.5);
   * each draw picks one of ``strengths`` concentrations s, log-spaced between
     ``min_strength`` and ``max_strength`` (0.1 .. 5, 15 values), and samples Dirichlet(s * p);
   * a draw with any weight above its bound is rejected;
   * weights below ``minimum`` are set to 0, the rest renormalised and rounded to multiples of
     ``minimum`` (here renormalised once more so that each mixture sums to 1 exactly);
   * ``oversample`` x more draws than needed are made, duplicates removed, and the requested
     number picked at random.

2. Train one small proxy per mixture (a static mixture) and record its target loss.

3. ``fit_regressor``: LightGBM (RegMix's choice: gbdt, learning rate 0.01, up to 1000 trees,
   early stopping after 3 rounds on a held-out tenth of the proxies, never on the mixtures
   it is judged on) when lightgbm is importable, else ridge regression on the weights and
   optionally log-weights or pairwise products (``RidgeRegressor``), with the penalty chosen
   by exact leave-one-out error.

4. ``search_mixture``: predict many Dirichlet(strength * p) samples and average the ``top_k``
   with the lowest predicted loss (RegMix: 100,000 samples from Dirichlet(p), top 128).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

FEATURES = ("linear", "log", "quadratic")
LOG_FLOOR = 1e-3
"""log-weight features use log(w + LOG_FLOOR), finite at w = 0."""


@dataclass(frozen=True)
class SamplerSettings:
    """RegMix's mixture-synthesis constants (defaults: its released 1M-proxy settings)."""

    temperature: float = 0.5
    min_strength: float = 0.1
    max_strength: float = 5.0
    strengths: int = 15
    max_usage: float = 15.0
    """A domain's weight may not exceed max_usage x its token share (nor 1)."""
    minimum: float = 2e-4
    """Weights below it become 0; the rest are rounded to multiples of it."""
    oversample: int = 100

    def __post_init__(self) -> None:
        if not 0 < self.temperature <= 1:
            raise ValueError(f"temperature={self.temperature}: must be in (0, 1]")
        if not 0 < self.min_strength <= self.max_strength:
            raise ValueError(
                f"strengths must satisfy 0 < min_strength ({self.min_strength}) <= "
                f"max_strength ({self.max_strength})"
            )
        if self.strengths < 1 or self.oversample < 1:
            raise ValueError("strengths and oversample must be >= 1")
        if self.max_usage <= 0 or not 0 < self.minimum < 1:
            raise ValueError("max_usage must be > 0 and minimum in (0, 1)")

    def strength_grid(self) -> np.ndarray:
        return np.logspace(
            math.log10(self.min_strength), math.log10(self.max_strength), self.strengths
        )


def _checked_prior(prior: Sequence[float]) -> np.ndarray:
    p = np.asarray(prior, dtype=np.float64)
    if p.ndim != 1 or p.size < 2 or np.any(~np.isfinite(p)) or np.any(p <= 0):
        raise ValueError(
            f"the prior must be >= 2 positive finite token shares, got {p.tolist()}; "
            "a domain with no tokens cannot be mixed"
        )
    return p / p.sum()


def usage_bounds(prior: Sequence[float], max_usage: float) -> np.ndarray:
    """[K] the largest weight each domain may get: min(max_usage * p_k, 1)."""
    return np.minimum(_checked_prior(prior) * max_usage, 1.0)


def sharpened(prior: Sequence[float], temperature: float) -> np.ndarray:
    """[K] p^temperature renormalised (temperature 1 leaves p unchanged)."""
    p = _checked_prior(prior) ** temperature
    return p / p.sum()


def _quantise(draws: np.ndarray, minimum: float) -> np.ndarray:
    """Zero weights below ``minimum``, renormalise, round to multiples, renormalise exactly."""
    kept = np.where(draws < minimum, 0.0, draws)
    kept /= kept.sum(axis=1, keepdims=True)
    rounded = np.round(kept / minimum) * minimum
    return rounded / rounded.sum(axis=1, keepdims=True)


def sample_mixtures(
    prior: Sequence[float],
    count: int,
    rng: np.random.Generator,
    settings: SamplerSettings | None = None,
) -> np.ndarray:
    """[count, K] distinct mixtures drawn by RegMix's rules (module docstring)."""
    settings = settings or SamplerSettings()
    bounds = usage_bounds(prior, settings.max_usage)
    base = sharpened(prior, settings.temperature)
    grid = settings.strength_grid()
    draws = count * settings.oversample
    per_strength = rng.multinomial(draws, np.full(len(grid), 1.0 / len(grid)))
    batches = [rng.dirichlet(base * s, size=n) for s, n in zip(grid, per_strength) if n]
    candidates = np.concatenate(batches)
    candidates = candidates[np.all(np.isfinite(candidates), axis=1)]
    candidates = candidates[np.all(candidates <= bounds, axis=1)]
    candidates = candidates[candidates.max(axis=1) >= settings.minimum]
    if len(candidates) == 0:
        raise ValueError(
            f"every one of {draws} draws broke a usage bound {bounds.tolist()}; raise max_usage"
        )
    quantised = _quantise(candidates, settings.minimum)
    grid_points = np.round(quantised / settings.minimum).astype(np.int64)
    _, first = np.unique(grid_points, axis=0, return_index=True)
    unique = quantised[np.sort(first)]
    if len(unique) < count:
        raise ValueError(
            f"only {len(unique)} distinct mixtures survived the rules, {count} requested; raise "
            "oversample or max_usage, or ask for fewer"
        )
    chosen = rng.choice(len(unique), size=count, replace=False)
    return unique[np.sort(chosen)]


def design_matrix(weights: np.ndarray, features: str) -> np.ndarray:
    """[M, F] regression features of mixtures [M, K]: w, (w, log(w+floor)) or (w, w_i w_j)."""
    w = np.asarray(weights, dtype=np.float64)
    if w.ndim != 2:
        raise ValueError(f"mixtures must be [M, K], got shape {w.shape}")
    if features == "linear":
        return w
    if features == "log":
        return np.concatenate([w, np.log(w + LOG_FLOOR)], axis=1)
    if features == "quadratic":
        i, j = np.triu_indices(w.shape[1])
        return np.concatenate([w, w[:, i] * w[:, j]], axis=1)
    raise ValueError(f"unknown features {features!r}; choose from {FEATURES}")


@dataclass
class RidgeRegressor:
    """Ridge regression y ~ b + x·beta on standardised features, penalty by leave-one-out.

    ``penalties`` is the grid of λ tried; the one with the smallest exact leave-one-out mean
    squared error (from the hat matrix, no refits) is kept.
    """

    features: str = "log"
    penalties: tuple[float, ...] = tuple(float(v) for v in np.logspace(-8, 3, 23))
    penalty: float = field(default=math.nan, init=False)
    loo_rmse: float = field(default=math.nan, init=False)
    loo_predictions: np.ndarray | None = field(default=None, init=False)
    _mean: np.ndarray | None = field(default=None, init=False, repr=False)
    _scale: np.ndarray | None = field(default=None, init=False, repr=False)
    _coef: np.ndarray | None = field(default=None, init=False, repr=False)
    _intercept: float = field(default=0.0, init=False, repr=False)

    name = "ridge"

    def fit(self, weights: np.ndarray, targets: np.ndarray) -> RidgeRegressor:
        x = design_matrix(weights, self.features)
        y = np.asarray(targets, dtype=np.float64)
        if len(x) != len(y) or len(y) < 3:
            raise ValueError(f"need >= 3 mixtures with one target each, got {len(x)} and {len(y)}")
        self._mean = x.mean(axis=0)
        scale = x.std(axis=0)
        self._scale = np.where(scale > 1e-12, scale, 1.0)
        z = (x - self._mean) / self._scale
        y_mean = float(y.mean())
        u, s, vt = np.linalg.svd(z, full_matrices=False)
        uty = u.T @ (y - y_mean)
        best = None
        for penalty in self.penalties:
            shrink = s**2 / (s**2 + penalty)
            fitted = y_mean + u @ (shrink * uty)
            leverage = (u**2) @ shrink + 1.0 / len(y)
            loo_residual = (y - fitted) / np.maximum(1.0 - leverage, 1e-12)
            error = float(np.mean(loo_residual**2))
            if best is None or error < best[0]:
                best = (error, penalty, y - loo_residual)
        error, self.penalty, self.loo_predictions = best
        self.loo_rmse = math.sqrt(error)
        self._coef = vt.T @ (s / (s**2 + self.penalty) * uty)
        self._intercept = y_mean
        return self

    def predict(self, weights: np.ndarray) -> np.ndarray:
        if self._coef is None:
            raise RuntimeError("fit the regressor before predicting")
        z = (design_matrix(weights, self.features) - self._mean) / self._scale
        return self._intercept + z @ self._coef

    def describe(self) -> dict:
        return {
            "regressor": self.name,
            "features": self.features,
            "penalty": self.penalty,
            "loo_rmse": self.loo_rmse,
        }


@dataclass
class LightGBMRegressor:
    """RegMix's regressor: LightGBM gbdt, lr 0.01, <= 1000 trees, early stopping on a held-out
    tenth of the training mixtures (RegMix stops on its test mixtures, which leaks)."""

    seed: int = 0
    holdout: float = 0.1
    _model: object = field(default=None, init=False, repr=False)
    best_iteration: int = field(default=0, init=False)

    name = "lightgbm"

    def fit(self, weights: np.ndarray, targets: np.ndarray) -> LightGBMRegressor:
        import lightgbm

        x = np.asarray(weights, dtype=np.float64)
        y = np.asarray(targets, dtype=np.float64)
        order = np.random.default_rng(self.seed).permutation(len(y))
        held = max(1, round(self.holdout * len(y)))
        val, train = order[:held], order[held:]
        self._model = lightgbm.LGBMRegressor(
            boosting_type="gbdt",
            learning_rate=0.01,
            n_estimators=1000,
            random_state=self.seed,
            verbose=-1,
        )
        self._model.fit(
            x[train],
            y[train],
            eval_set=[(x[val], y[val])],
            callbacks=[lightgbm.early_stopping(3, verbose=False)],
        )
        self.best_iteration = int(self._model.best_iteration_ or 0)
        return self

    def predict(self, weights: np.ndarray) -> np.ndarray:
        return np.asarray(self._model.predict(np.asarray(weights, dtype=np.float64)))

    def describe(self) -> dict:
        return {"regressor": self.name, "best_iteration": self.best_iteration}


def lightgbm_available() -> bool:
    try:
        import lightgbm  # noqa: F401
    except ImportError:
        return False
    return True


def fit_regressor(
    weights: np.ndarray, targets: np.ndarray, kind: str = "auto", features: str = "log"
):
    """A fitted regressor: ``kind`` auto (LightGBM if importable, else ridge), lightgbm or ridge."""
    if kind == "auto":
        kind = "lightgbm" if lightgbm_available() else "ridge"
    if kind == "lightgbm":
        if not lightgbm_available():
            raise ValueError(
                "regressor lightgbm: the lightgbm package is not importable; use ridge"
            )
        return LightGBMRegressor().fit(weights, targets)
    if kind == "ridge":
        return RidgeRegressor(features=features).fit(weights, targets)
    raise ValueError(f"unknown regressor {kind!r}; choose auto, lightgbm or ridge")


def spearman(a: Sequence[float], b: Sequence[float]) -> float:
    """Spearman rank correlation (ties averaged)."""
    from scipy.stats import spearmanr

    return float(spearmanr(a, b).statistic)


@dataclass(frozen=True)
class SearchResult:
    weights: np.ndarray
    """[K] the average of the top_k candidates (sums to 1)."""
    predicted: float
    """The regressor's prediction for ``weights``."""
    top_predicted: np.ndarray
    """[top_k] predictions of the averaged candidates, best first."""
    candidates: int


def search_mixture(
    regressor,
    prior: Sequence[float],
    rng: np.random.Generator,
    samples: int = 100_000,
    top_k: int = 128,
    strength: float = 1.0,
    chunk: int = 20_000,
) -> SearchResult:
    """Average of the ``top_k`` lowest-predicted of ``samples`` Dirichlet(strength * p) mixtures."""
    if not 1 <= top_k <= samples:
        raise ValueError(f"top_k={top_k} must be in [1, samples={samples}]")
    alpha = _checked_prior(prior) * strength
    best_x = np.empty((0, len(alpha)))
    best_y = np.empty(0)
    for start in range(0, samples, chunk):
        draws = rng.dirichlet(alpha, size=min(chunk, samples - start))
        draws = draws[np.all(np.isfinite(draws), axis=1)]
        predicted = regressor.predict(draws)
        pool_x = np.concatenate([best_x, draws])
        pool_y = np.concatenate([best_y, predicted])
        keep = np.argsort(pool_y, kind="stable")[:top_k]
        best_x, best_y = pool_x[keep], pool_y[keep]
    weights = best_x.mean(axis=0)
    weights /= weights.sum()
    return SearchResult(
        weights=weights,
        predicted=float(regressor.predict(weights[None])[0]),
        top_predicted=best_y,
        candidates=samples,
    )
