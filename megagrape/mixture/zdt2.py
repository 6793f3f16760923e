"""ZDT-2 toy problem (multi-objective data-mixing paper, §5.1) for exercising the methods.

Two objectives on x in [0, 1]^30 play the role of two training domains:

    f1(x) = x_1,   f2(x) = g(x) (1 - (x_1 / g(x))^2),   g(x) = 1 + 9/29 * sum_{i>=2} x_i

The Pareto front is g = 1 (x_2..x_30 = 0): f2 = 1 - f1^2, a concave front, so a fixed linear
scalarisation can only end at one of its two ends. :func:`run_zdt2` uses a method as the
weighting rule of projected gradient descent: at every step the method sees the 2 x 2 Gram of
the objective gradients (as ``domain_gram`` and, with the objectives also as the targets,
``domain_target_gram``), the objective values as domain and target losses, and optionally the
excess over a reference point; then x <- clip(x - lr * sum_k α_k grad f_k, 0, 1).

The gradients the method sees are projected on the box's tangent cone: a component that would
push a coordinate sitting on a bound out of the box is zeroed. At a point of the front the two
projected gradients are then exactly opposite (only x_1 can move), which is what makes the front
Pareto-stationary for MGDA and IMTL.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from megagrape.mixture.base import DTYPE, MixtureMethod, Observation
from megagrape.mixture.registry import build_method

DIM = 30
G_SLOPE = 9.0 / (DIM - 1)


def g_value(x: Tensor) -> Tensor:
    """g(x) = 1 + 9/29 sum_{i>=2} x_i (1 exactly on the Pareto set)."""
    return 1.0 + G_SLOPE * x[1:].sum()


def objectives(x: Tensor) -> Tensor:
    """(f1, f2) [2] at x [30]."""
    g = g_value(x)
    return torch.stack([x[0], g * (1.0 - (x[0] / g) ** 2)])


def jacobian(x: Tensor) -> Tensor:
    """[2, 30]: rows grad f1 = e_1 and grad f2 = (-2 x_1 / g, 9/29 (1 + x_1^2 / g^2), ...)."""
    g = g_value(x)
    jac = torch.zeros(2, x.numel(), dtype=DTYPE)
    jac[0, 0] = 1.0
    jac[1, 0] = -2.0 * x[0] / g
    jac[1, 1:] = G_SLOPE * (1.0 + (x[0] / g) ** 2)
    return jac


def tangent_jacobian(jac: Tensor, x: Tensor) -> Tensor:
    """``jac`` with the components that would move a bound coordinate out of [0, 1] zeroed."""
    leaving = ((x <= 0.0).unsqueeze(0) & (jac > 0.0)) | ((x >= 1.0).unsqueeze(0) & (jac < 0.0))
    return jac.masked_fill(leaving, 0.0)


def pareto_front(points: int) -> Tensor:
    """[points, 2] samples (f1, 1 - f1^2) of the front, f1 from 0 to 1."""
    f1 = torch.linspace(0.0, 1.0, points, dtype=DTYPE)
    return torch.stack([f1, 1.0 - f1**2], dim=1)


@dataclass
class Zdt2Trajectory:
    """One projected-gradient run driven by a reweighting method."""

    losses: Tensor
    """[steps + 1, 2]: (f1, f2) before every step and at the end."""
    weights: Tensor
    """[steps, 2]: the α used at each step."""
    final_x: Tensor
    """[30]: the last iterate."""
    final_direction_norm: float
    """||sum_k α_k grad f_k|| (projected gradients) at the last iterate, with the last α."""
    skipped_events: int
    """Events the method skipped (weights unchanged)."""


def run_zdt2(
    method: MixtureMethod,
    x0: Tensor,
    steps: int,
    lr: float,
    reference_losses: Tensor | None = None,
    reweight_every: int = 1,
) -> Zdt2Trajectory:
    """Minimise (f1, f2) from ``x0`` for ``steps`` projected-gradient steps weighted by ``method``.

    The method is called at steps 1, 1 + R, 1 + 2R, ... (R = ``reweight_every``, like the
    trainer's reweighting events) and its weights are kept in between.
    ``reference_losses`` [2] gives DoReMi's excess losses max(f - reference, 0).
    """
    x = x0.to(DTYPE).clone()
    losses, used = [], []
    skipped = 0
    weights = method.domain_weights
    for step in range(1, steps + 1):
        values = objectives(x)
        jac = tangent_jacobian(jacobian(x), x)
        losses.append(values)
        if (step - 1) % reweight_every == 0:
            weights, skip = _event(method, step, lr, jac, values, reference_losses)
            skipped += skip
        used.append(weights)
        x = (x - lr * (jac.T @ weights)).clamp(0.0, 1.0)
    losses.append(objectives(x))
    final_jac = tangent_jacobian(jacobian(x), x)
    direction = final_jac.T @ used[-1]
    return Zdt2Trajectory(
        losses=torch.stack(losses),
        weights=torch.stack(used),
        final_x=x,
        final_direction_norm=float(direction.norm()),
        skipped_events=skipped,
    )


def _event(
    method: MixtureMethod,
    step: int,
    lr: float,
    jac: Tensor,
    values: Tensor,
    reference_losses: Tensor | None,
) -> tuple[Tensor, bool]:
    """One reweighting event on the toy: the new weights and whether the method skipped it."""
    gram = jac @ jac.T
    update = method.update(
        Observation(
            step=step,
            lr=lr,
            domain_target_gram=gram,
            domain_gram=gram,
            domain_losses=values,
            target_losses=values,
            domain_excess_losses=None
            if reference_losses is None
            else (values - reference_losses).clamp_min(0.0),
        )
    )
    return update.domain_weights, update.skipped is not None


OBJECTIVE_NAMES = ("f1", "f2")
"""Domain (and target) names of the two objectives."""
STEP_SIZE = 0.02
STEPS = 1500
REWEIGHT_EVERY = 5
DOREMI_REFERENCE = (0.0, 1.0)
"""DoReMi's reference losses: where the uniform-mixture run ends (its "reference model")."""


@dataclass(frozen=True)
class Zdt2Case:
    """One method configuration of the toy comparison."""

    label: str
    method: str
    options: dict
    reference_losses: tuple[float, float] | None = None


CASES = (
    Zdt2Case("linear (uniform)", "static", {"source": "uniform"}),
    Zdt2Case("DoReMi", "doremi", {}, DOREMI_REFERENCE),
    Zdt2Case("DoGE", "doge", {"exclude_diagonal": True}),
    Zdt2Case("MGDA", "mgda", {}),
    Zdt2Case("IMTL", "imtl", {}),
    Zdt2Case("EPO r=(1,1)", "epo", {"preference": [1.0, 1.0]}),
    Zdt2Case("EPO r=(2,1)", "epo", {"preference": [2.0, 1.0]}),
    Zdt2Case("EPO r=(1,2)", "epo", {"preference": [1.0, 2.0]}),
)
"""The paper's Figure 3 line-up; DoGE's targets are the objectives themselves (train = target
sets, so DoGE drops <g_k, g_k>), DoReMi's reference is the end point of the uniform run."""


def start_point(x1: float, rest: float) -> Tensor:
    """x0 [30] with x_1 = ``x1`` and x_2..x_30 = ``rest``."""
    x = torch.full((DIM,), rest, dtype=DTYPE)
    x[0] = x1
    return x


def run_case(
    case: Zdt2Case,
    x0: Tensor,
    steps: int = STEPS,
    lr: float = STEP_SIZE,
    reweight_every: int = REWEIGHT_EVERY,
) -> Zdt2Trajectory:
    """Build the case's method (objectives as domains and targets) and run it from ``x0``."""
    method = build_method(case.method, case.options, OBJECTIVE_NAMES, OBJECTIVE_NAMES, None, None)
    reference = (
        None if case.reference_losses is None else torch.tensor(case.reference_losses, dtype=DTYPE)
    )
    return run_zdt2(method, x0, steps, lr, reference, reweight_every)
