"""Benchmark analysis and report for multiple-choice targets, LM-text targets and a mix of both."""

from __future__ import annotations

import json

import numpy as np
import pytest

from megagrape.experiments.analysis import analyse, method_summary
from megagrape.experiments.report import write_outputs

TOKENS = np.arange(1, 6, dtype=np.float64) * 1000.0


def mc_scores(acc: float, loss: float) -> dict:
    return {"acc": acc, "acc_norm": acc + 0.05, "loss": loss}


def lm_scores(loss: float) -> dict:
    return {"loss": loss, "ppl": float(np.exp(loss)), "bpb": loss / np.log(2) / 4}


def result(method: str, seed: int, slope: float, kinds: dict[str, str]) -> dict:
    """A build_result document whose targets are of the given kinds ("mc" or "lm")."""
    curves, final = {}, {}
    for index, (target, kind) in enumerate(kinds.items()):
        loss = 6.0 + index - slope * TOKENS / 1000
        curves[target] = loss.tolist()
        final[target] = (
            mc_scores(0.3 + 0.1 * slope + 0.01 * seed, float(loss[-1]))
            if kind == "mc"
            else lm_scores(float(loss[-1]))
        )
    return {
        "method": method,
        "seed": seed,
        "name": f"{method}-s{seed}",
        "tokens": float(TOKENS[-1]),
        "seconds": 30.0,
        "curve": {"steps": [1, 2, 3, 4, 5], "tokens": TOKENS.tolist(), "loss": curves},
        "final": final,
        "final_alpha": {"web": 0.5, "code": 0.5},
    }


def results_for(kinds: dict[str, str]) -> list[dict]:
    return [
        result(method, seed, slope, kinds)
        for seed in (1, 2)
        for method, slope in (("uniform", 0.2), ("grape", 0.4))
    ]


MIXED = {"arc": "mc", "wiki_uk": "lm", "piqa": "mc"}


def test_mixed_targets_summarise_accuracy_over_multiple_choice_targets_only():
    results = results_for(MIXED)
    summary = method_summary(results, "grape")
    assert summary["accuracy_targets"] == ["arc", "piqa"]
    assert set(summary["final_acc"]) == {"arc", "piqa"}
    assert set(summary["final_ppl"]) == {"wiki_uk"}
    assert set(summary["final_loss"]) == {"arc", "wiki_uk", "piqa"}
    # mean over the two MC targets per seed (both 0.34 + 0.01 s), then over seeds
    assert summary["mean_acc"]["mean"] == pytest.approx(0.3 + 0.04 + 0.015)
    assert summary["mean_acc"]["min"] == pytest.approx(0.35)
    assert summary["mean_acc_norm"]["max"] == pytest.approx(0.36 + 0.05)
    # worst target by loss includes the LM target (offset +1 over arc)
    assert summary["worst_target"] == "piqa"
    assert summary["final_worst_loss"]["mean"] == pytest.approx(8.0 - 0.4 * 5)


def test_lm_only_targets_have_no_accuracy():
    summary = method_summary(results_for({"wiki_uk": "lm", "wiki_ca": "lm"}), "uniform")
    assert summary["accuracy_targets"] == []
    assert summary["final_acc"] == {} and summary["mean_acc"] is None
    assert summary["mean_acc_norm"] is None
    assert summary["final_ppl"]["wiki_ca"]["mean"] == pytest.approx(np.exp(7.0 - 0.2 * 5))


@pytest.mark.parametrize(
    "kinds",
    [MIXED, {"wiki_uk": "lm", "wiki_ca": "lm"}, {"arc": "mc", "piqa": "mc"}],
    ids=["mixed", "lm", "mc"],
)
def test_report_tables_and_figures_for_every_target_kind(tmp_path, kinds):
    results = results_for(kinds)
    analysis = analyse(results, ["uniform", "grape"])
    paths = write_outputs(tmp_path, analysis, results, {"title": "kinds"})
    for key in ("target_loss", "summary_loss", "final_alpha"):
        assert paths[key].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    text = (tmp_path / "results.md").read_text()
    lines = text.splitlines()
    mc = [t for t, kind in kinds.items() if kind == "mc"]
    lm = [t for t, kind in kinds.items() if kind == "lm"]
    loss_header = next(i for i, x in enumerate(lines) if x.startswith("Final loss per target")) + 2
    assert lines[loss_header] == "| method | " + " | ".join(kinds) + " |"
    grape_row = next(line for line in lines if line.startswith("| grape | 2 |"))
    if mc:
        header = lines.index("Final accuracy per multiple-choice target (mean over seeds):") + 2
        assert lines[header] == "| method | " + " | ".join(mc) + " |"
        assert "n/a" not in grape_row
    else:
        assert "accuracy per multiple-choice target" not in text
        assert grape_row.count("n/a") == 2  # mean acc and mean acc_norm
    if lm:
        header = lines.index("Final perplexity per LM-text target (mean over seeds):") + 2
        assert lines[header] == "| method | " + " | ".join(lm) + " |"
    else:
        assert "perplexity" not in text
    if lm:
        header = lines.index(
            "Final bits per UTF-8 byte per LM-text target (mean over seeds; compares across "
            "tokenizers):"
        )
        assert lines[header + 2] == "| method | " + " | ".join(lm) + " |"
    start = lines.index("## Against seed noise")
    evidence = [line for line in lines[start:] if line.startswith("| grape | uniform | ")]
    assert [row.split(" | ")[2] for row in evidence] == ["worst", "mean"]
    assert all("[" in row.split(" | ")[3] for row in evidence)  # 2 seeds: an interval
    assert any(line.startswith("| worst | [") for line in lines)  # uniform's noise floor
    document = json.loads((tmp_path / "results.json").read_text())
    assert document["analysis"]["summaries"]["grape"]["accuracy_targets"] == mc
    headline = document["analysis"]["comparisons"][0]
    assert (headline["method"], headline["baseline"]) == ("grape", "uniform")


def test_runs_with_different_targets_are_refused_by_name():
    results = results_for(MIXED)
    del results[3]["final"]["wiki_uk"]
    with pytest.raises(ValueError, match=r"grape-s2 lacks 'wiki_uk'"):
        method_summary(results, "grape")


def test_comparisons_carry_interval_wall_clock_loss_difference_and_noise_floor():
    kinds = {"arc": "mc", "wiki_uk": "lm"}
    results = []
    for seed, shift in ((1, 0.0), (2, 0.1), (3, -0.1)):
        for method, slope, step_seconds in (("uniform", 0.2, 1.0), ("grape", 0.4, 3.0)):
            r = result(method, seed, slope, kinds)
            r["curve"]["loss"] = {t: [v + shift for v in c] for t, c in r["curve"]["loss"].items()}
            r["curve"]["train_seconds"] = (np.arange(1, 6) * step_seconds).tolist()
            results.append(r)
    analysis = analyse(results, ["uniform", "grape"])
    grape = analysis.comparison("grape", "uniform")
    worst = grape.spreads["worst"]
    # grape reaches each seed's uniform final worst loss (6 - 1 + 1 + shift at 5) = 6 + shift
    # at 6 + 1 - 0.4 t = 6 => t = 2.5 (in thousands of tokens): ratio 0.5 on every seed
    assert [e.bound for e in worst.per_seed] == pytest.approx([0.5, 0.5, 0.5])
    assert grape.intervals["worst"].low == pytest.approx(0.5)
    assert grape.intervals["worst"].high == pytest.approx(0.5)
    # three times the seconds per step: 2.5 steps x 3 s against uniform's 5 x 1 s
    assert [e.bound for e in grape.wall_clock["worst"].per_seed] == pytest.approx([1.5] * 3)
    difference = grape.loss_differences["mean"]
    assert difference.interval.mean == pytest.approx(-0.2 * 5)
    floor = analysis.noise_floors["worst"]
    assert len(floor.pairs) == 6 and floor.final_loss_range == pytest.approx(0.2)
    assert floor.low < 1.0  # the luckiest uniform seed reaches another's final loss early
    document = analysis.to_dict()
    headline = document["comparisons"][0]["worst"]
    assert headline["interval"]["count"] == 3 and headline["wall_clock"]["mean"] == 1.5
    assert document["noise_floor"]["mean"]["label"].endswith("6 seed pairs")


def test_results_without_training_seconds_have_no_wall_clock_efficiency():
    analysis = analyse(results_for({"arc": "mc"}), ["uniform", "grape"])
    assert analysis.comparison("grape", "uniform").wall_clock is None
    assert analysis.to_dict()["comparisons"][0]["mean"]["wall_clock"] is None
