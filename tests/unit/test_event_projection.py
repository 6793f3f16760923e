"""The event-cost projection: each term scales with exactly the quantities its docstring names."""

from dataclasses import replace

import pytest

from megagrape.experiments.event_projection import (
    EventShape,
    MeasuredEvent,
    device_balance,
    measured_from_bench_gram,
    project_event,
)

SHAPE = EventShape(
    domains=16,
    targets=6,
    parameters=2_000_000,
    flops_per_token=1.2e7,
    global_batch_size=16,
    signal_batch_size=16,
    seq_length=128,
    interval=5,
)
MEASURED = MeasuredEvent(
    shape=SHAPE,
    plain_step_s=0.4,
    event_extra_s=2.8,
    target_gradients_s=2.0,
    gram_bytes_per_s=20e9,
)


def test_the_same_shape_and_machine_give_back_the_measurement():
    projection = project_event(MEASURED, SHAPE, MEASURED.balance)
    assert projection.target_steps == pytest.approx(2.0 / 0.4)
    assert projection.rest_steps == pytest.approx(0.8 / 0.4)
    assert projection.event_steps == pytest.approx(7.0)
    assert projection.overhead == pytest.approx(7.0 / 5)


def test_each_term_scales_with_its_own_quantities():
    base = project_event(MEASURED, SHAPE, MEASURED.balance)
    # Twice the signal batch: twice the target gradients, the rest unchanged.
    signal = project_event(MEASURED, replace(SHAPE, signal_batch_size=32), MEASURED.balance)
    assert signal.target_steps == pytest.approx(2 * base.target_steps)
    assert signal.rest_steps == pytest.approx(base.rest_steps)
    # Four times the global batch: a step does 4x the work, so both terms are a quarter.
    batch = project_event(MEASURED, replace(SHAPE, global_batch_size=64), MEASURED.balance)
    assert batch.target_steps == pytest.approx(base.target_steps / 4)
    assert batch.rest_steps == pytest.approx(base.rest_steps / 4)
    # A machine with 10x the FLOPs per byte: the memory-bound rest costs 10x more steps.
    gpu = project_event(MEASURED, SHAPE, 10 * MEASURED.balance)
    assert gpu.target_steps == pytest.approx(base.target_steps)
    assert gpu.rest_steps == pytest.approx(10 * base.rest_steps)
    # 3x the parameters and FLOPs per token: the rest's bytes and the step's FLOPs cancel.
    bigger = replace(SHAPE, parameters=6_000_000, flops_per_token=3.6e7)
    assert project_event(MEASURED, bigger, MEASURED.balance).rest_steps == pytest.approx(
        base.rest_steps
    )
    # More gradients (K + N from 22 to 44): the rest doubles; the targets follow N alone.
    wider = project_event(MEASURED, replace(SHAPE, domains=38), MEASURED.balance)
    assert wider.rest_steps == pytest.approx(2 * base.rest_steps)
    assert wider.target_steps == pytest.approx(base.target_steps)
    # A longer interval amortises the same event over more steps.
    sparse = project_event(MEASURED, replace(SHAPE, interval=50), MEASURED.balance)
    assert sparse.overhead == pytest.approx(base.overhead / 10)


def test_balance_is_the_step_flops_over_the_gram_bandwidth():
    flops_per_s = SHAPE.flops_per_token * 16 * 128 / 0.4
    assert MEASURED.balance == pytest.approx(flops_per_s / 20e9)
    assert device_balance(1e15, 0.5, 2e12, 0.5) == pytest.approx(500.0)


def test_bad_measurements_and_shapes_are_refused():
    with pytest.raises(ValueError, match="within the event's extra time"):
        replace(MEASURED, target_gradients_s=3.0)
    with pytest.raises(ValueError, match=r"EventShape\.interval"):
        replace(SHAPE, interval=0)
    with pytest.raises(ValueError, match="balance"):
        project_event(MEASURED, SHAPE, 0.0)


def test_a_bench_gram_record_gives_the_measured_event():
    record = {
        "results": [
            {"variant": "bf16", "kernel_gb_s": 99.0},
            {"variant": "fp32", "kernel_gb_s": 20.0},
        ],
        "event": {
            "domains": 16,
            "targets": 6,
            "interval": 5,
            "global_batch_size": 16,
            "model": {"parameters": 2_000_000, "seq_length": 128},
            "plain_step_s": 0.4,
            "event_extra_s": 2.8,
            "event_parts_s": {"target_gradients": 2.0},
        },
    }
    measured = measured_from_bench_gram(record, flops_per_token=1.2e7, signal_batch_size=16)
    assert measured == MEASURED
    with pytest.raises(ValueError, match="fp32 kernel row"):
        measured_from_bench_gram({**record, "results": record["results"][:1]}, 1.2e7, 16)
