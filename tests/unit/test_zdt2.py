"""ZDT-2 toy of the multi-objective data-mixing paper (§5.1): where each weighting rule ends.

Every method drives projected gradient descent on (f1, f2) (see megagrape/mixture/zdt2.py) from
x0 = (0.5, 0.02, ..., 0.02), g(x0) = 1.18, for 1500 steps of size 0.02 with a reweighting event
every 5 steps. The Pareto front is g = 1, f2 = 1 - f1^2. What is measured at the last iterate:

* g(x) - 1 (0 on the front) and (f1, f2);
* for the linear (uniform), DoReMi and DoGE rules: f1 -> 0, i.e. the f1 end (0, 1) of the front;
* for MGDA and IMTL: the point where they stop on the front (f1 > 0.25, f2 < 0.95) and the norm of
  their combined projected gradient there (0: Pareto-stationary), and that they no longer move;
* for EPO with preference r: the angle between (f1, f2) and the ray (1/r_1, 1/r_2).
"""

import math

import pytest
import torch

from megagrape.mixture.zdt2 import (
    CASES,
    Zdt2Case,
    g_value,
    objectives,
    pareto_front,
    run_case,
    start_point,
)

X0 = start_point(0.5, 0.02)
CASE_BY_LABEL = {case.label: case for case in CASES}


@pytest.fixture(scope="module")
def runs():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny tensors: thread start-up would dominate
    try:
        yield {case.label: run_case(case, X0) for case in CASES}
    finally:
        torch.set_num_threads(threads)


def test_problem_definition():
    assert float(g_value(X0)) == pytest.approx(1.18)
    on_front = start_point(0.6, 0.0)
    assert objectives(on_front).tolist() == pytest.approx([0.6, 1 - 0.36])
    front = pareto_front(5)
    assert front[:, 1].tolist() == pytest.approx([1 - f**2 for f in front[:, 0].tolist()])


@pytest.mark.parametrize("label", ["linear (uniform)", "DoReMi", "DoGE"])
def test_linear_doremi_and_doge_collapse_to_the_f1_end(runs, label):
    run = runs[label]
    f1, f2 = run.losses[-1].tolist()
    assert float(g_value(run.final_x)) - 1.0 < 1e-9  # on the front
    assert f1 < 1e-3 and f2 > 0.999  # at its f1 end (0, 1)
    assert run.skipped_events == 0


def test_doge_ties_and_doremi_favours_f1(runs):
    # DoGE with targets = objectives scores each objective by <g1, g2> only: equal scores, so α
    # never leaves uniform. DoReMi: f2's excess over the reference (0, 1) is 0 on the front while
    # f1's is x1 > 0, so DoReMi shifts weight to f1.
    assert torch.equal(runs["DoGE"].weights, torch.full_like(runs["DoGE"].weights, 0.5))
    assert runs["DoReMi"].weights[-1, 0] > 0.75


def test_doge_counting_self_alignment_would_end_at_the_other_end():
    # Control: without dropping <g_k, g_k>, DoGE favours the larger-gradient objective f2 and
    # slides to the f2 end, so the f1-end assertion above is not vacuous.
    case = Zdt2Case("DoGE (diagonal kept)", "doge", {})
    f1, f2 = run_case(case, X0).losses[-1].tolist()
    assert f1 > 0.99 and f2 < 0.02


@pytest.mark.parametrize("label", ["MGDA", "IMTL"])
def test_mgda_and_imtl_stop_on_the_front_with_lower_f2(runs, label):
    run = runs[label]
    f1, f2 = run.losses[-1].tolist()
    assert float(g_value(run.final_x)) - 1.0 < 1e-9
    assert f1 > 0.25 and f2 < 0.95  # interior of the front: f2 below the f1 end's 1.0
    assert run.final_direction_norm < 1e-9  # Pareto-stationary: the projected gradients cancel
    assert torch.allclose(run.losses[-200:], run.losses[-1].expand(200, 2), atol=1e-12, rtol=0)


@pytest.mark.parametrize("label", ["EPO r=(1,1)", "EPO r=(2,1)", "EPO r=(1,2)"])
def test_epo_ends_on_its_preference_ray(runs, label):
    run = runs[label]
    f1, f2 = run.losses[-1].tolist()
    r1, r2 = CASE_BY_LABEL[label].options["preference"]
    angle = math.degrees(abs(math.atan2(f2, f1) - math.atan2(1 / r2, 1 / r1)))
    assert float(g_value(run.final_x)) - 1.0 < 1e-9
    assert angle < 2.0
    assert run.skipped_events == 0
