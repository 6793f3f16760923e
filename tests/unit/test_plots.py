"""megagrape.train.mixture_plot and tools/plot_mixture.py: mixture.jsonl -> PNG, and clear errors on bad input."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import numpy as np
import pytest

from megagrape.errors import DataError
from megagrape.train.mixture_plot import plot_mixture, read_mixture
from tools import plot_mixture as cli

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def synthetic_records(domains: int, tasks: int | None, events: int = 12) -> list[dict]:
    """Weights drifting smoothly from uniform; task weights null on the first event; event 5
    skipped (weights unchanged)."""
    rng = np.random.default_rng(domains)
    drift = rng.normal(size=domains)
    records = []
    for event in range(events):
        step = 5 * (event + 1)
        alpha = np.exp(0.1 * event * drift)
        alpha /= alpha.sum()
        task_weights = None
        if tasks and event > 0:
            z = np.exp(0.05 * event * np.arange(tasks))
            task_weights = {f"task_{n}": float(w) for n, w in enumerate(z / z.sum())}
        records.append(
            {
                "step": step,
                "consumed_samples": 16 * step,
                "domain_weights": {f"domain_{k:02d}": float(w) for k, w in enumerate(alpha)},
                "task_weights": task_weights,
                "skipped": "non-finite Gram" if event == 5 else None,
                "diagnostics": {"roi": [0.1] * (tasks or 1)},
                "reweight_time_s": 0.5,
            }
        )
    return records


def write_jsonl(path: Path, records: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def png_size(path: Path) -> tuple[int, int]:
    """(width, height) from the IHDR chunk; asserts the PNG signature."""
    data = path.read_bytes()
    assert data[:8] == PNG_SIGNATURE and data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


@pytest.mark.parametrize(("domains", "tasks"), [(4, 3), (16, None), (64, 8)])
def test_renders_a_png_for_4_to_64_domains(tmp_path, domains, tasks):
    records = synthetic_records(domains, tasks)
    mixture = write_jsonl(tmp_path / "run" / "mixture.jsonl", records)
    out = plot_mixture(read_mixture(mixture), tmp_path / "plots" / "mixture.png", title="run")
    width, height = png_size(out)
    assert out.stat().st_size > 20_000
    assert 800 <= width <= 4000 and 400 <= height <= 3000
    # a second panel for the task weights makes the figure taller
    single = plot_mixture(synthetic_records(domains, None), tmp_path / "single.png")
    assert (height > png_size(single)[1]) == (tasks is not None)
    # legends of 64 names take extra columns: wider than the 4-domain figure
    if domains == 64:
        narrow = plot_mixture(synthetic_records(4, tasks), tmp_path / "narrow.png")
        assert width > png_size(narrow)[0]


def test_single_event_still_draws(tmp_path):
    out = plot_mixture(synthetic_records(4, 2, events=1), tmp_path / "one.png")
    assert png_size(out)[0] > 0 and out.stat().st_size > 10_000


def test_cli_writes_default_path(tmp_path, capsys):
    run = tmp_path / "qs"
    write_jsonl(run / "mixture.jsonl", synthetic_records(4, 4))
    assert cli.main([str(run)]) == 0
    assert png_size(run / "plots" / "mixture.png")[0] > 0
    assert "12 reweighting events" in capsys.readouterr().out


def test_missing_and_empty_files_are_named(tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    with pytest.raises(DataError, match=r"run/mixture\.jsonl: no such file.*first reweighting"):
        read_mixture(run / "mixture.jsonl")
    assert cli.main([str(run)]) == 2
    assert "mixture.jsonl: no such file" in capsys.readouterr().err
    (run / "mixture.jsonl").write_text("\n")
    with pytest.raises(DataError, match=r"mixture\.jsonl: empty"):
        read_mixture(run / "mixture.jsonl")
    with pytest.raises(DataError, match="no records"):
        plot_mixture([], tmp_path / "x.png")


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ('{"step": 10, "domain_weights": {"a": 0.5', r"mixture\.jsonl:3"),
        ('{"domain_weights": {"a": 0.5, "b": 0.5}}', r"mixture\.jsonl:3: 'step' = None"),
        ('{"step": 10, "domain_weights": []}', r":3: 'domain_weights' must be a non-empty"),
        ('{"step": 10, "domain_weights": {"a": "x", "b": 1}}', r":3: domain_weights\['a'\]"),
        ('{"step": 10, "domain_weights": {"a": 1}, "task_weights": 3}', r":3: 'task_weights'"),
        ("[1, 2]", r"mixture\.jsonl:3"),
    ],
)
def test_malformed_line_is_named_with_its_number(tmp_path, line, expected):
    records = synthetic_records(2, None, events=2)
    path = write_jsonl(tmp_path / "mixture.jsonl", records)
    path.write_text(path.read_text() + line + "\n")
    with pytest.raises(DataError, match=expected):
        read_mixture(path)


def test_records_with_different_domains_are_refused(tmp_path):
    records = synthetic_records(4, None, events=3)
    records[2]["domain_weights"] = {"domain_00": 0.5, "other": 0.5}
    with pytest.raises(DataError, match=r"record 3 \(step 15\).*missing \['domain_01'"):
        plot_mixture(records, tmp_path / "x.png")
