"""Every shipped run config loads, validates and builds its mixture method; `base:` inheritance."""

from __future__ import annotations

from pathlib import Path

import pytest

from megagrape.config import load_config
from megagrape.errors import ConfigError
from megagrape.mixture import build_method

REPO = Path(__file__).resolve().parents[2]
PRESET_NAMES = {
    "quickstart": (
        ["code_python", "legal", "literature", "tech_docs"],
        ["arc_easy", "logiqa", "piqa", "sciq"],
    ),
    "reasoning": (
        [
            "brown",
            "code_go",
            "code_python",
            "code_rust",
            "dictionary",
            "email",
            "legal",
            "literature",
            "speeches",
            "tech_docs",
            "web_sentences",
        ],
        ["arc_challenge", "arc_easy", "hellaswag", "logiqa", "piqa", "sciq"],
    ),
}
CONFIGS = sorted(p for p in (REPO / "configs").rglob("*.yaml"))


@pytest.mark.parametrize(
    "path", CONFIGS, ids=[str(p.relative_to(REPO / "configs")) for p in CONFIGS]
)
def test_shipped_config_is_valid(path):
    cfg = load_config(path)
    cfg.validate(world_size=2)
    preset = Path(cfg.data.corpus).name
    domains, tasks = PRESET_NAMES[preset]
    method = build_method(
        cfg.mixture.method,
        cfg.mixture.options,
        domain_names=domains,
        task_names=tasks,
        initial_weights=None,
        domain_token_counts=[1000 + i for i in range(len(domains))],
    )
    assert method.domain_weights.shape == (len(domains),)


def test_every_method_has_a_config_for_each_preset():
    for preset in ("quickstart", "reasoning"):
        methods = {
            load_config(p).mixture.method
            for p in CONFIGS
            if Path(load_config(p).data.corpus).name == preset
        }
        assert methods >= {"grape", "doge", "doremi", "odm", "mgda", "imtl", "epo", "static"}, (
            preset
        )


def test_base_inheritance_merges_sections(tmp_path):
    (tmp_path / "parent.yaml").write_text(
        "name: p\ntrain:\n  lr: 0.1\n  train_iters: 7\nmixture:\n  options: {mu_a: 1.0}\n"
    )
    (tmp_path / "child.yaml").write_text(
        "base: parent.yaml\nname: c\ntrain:\n  lr: 0.2\nmixture:\n  options: {mu: 3.0}\n"
    )
    cfg = load_config(tmp_path / "child.yaml")
    assert (cfg.name, cfg.train.lr, cfg.train.train_iters) == ("c", 0.2, 7)
    assert cfg.mixture.options == {"mu": 3.0}, (
        "options are replaced whole, not merged across methods"
    )
    (tmp_path / "loop.yaml").write_text("base: loop.yaml\n")
    with pytest.raises(ConfigError, match="makes a cycle"):
        load_config(tmp_path / "loop.yaml")
