"""The command line and the pre-flight check: every known bad combination is refused before any
process group starts (exit 2, the fields named); --dry-run, --print-config, --list-methods, --help."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from megagrape.config import RunConfig, load_config, save_config
from megagrape.configtools import field_docstrings
from megagrape.ds_config import read_ds_config
from megagrape.errors import ConfigError, DataError
from megagrape.mixture import KNOWN_METHODS, options_class
from megagrape.train.launch import split_overrides
from megagrape.train.preflight import preflight
from tests.dist_utils import free_port
from tests.run_utils import tiny_config, write_run_config

REPO = Path(__file__).resolve().parents[2]
SCRIPT = str(REPO / "tools" / "pretrain_grape.py")
ZERO1 = "configs/ds/zero1.json"


def check(cfg: RunConfig, world_size: int = 1, ds_path: str = ZERO1, ds_edit=None):
    ds = read_ds_config(REPO / ds_path)
    if ds_edit is not None:
        ds_edit(ds)
    return preflight(cfg, ds, world_size, ds_source=ds_path)


# Each case: overrides, world size, DeepSpeed config, a piece of the message naming the fields.
BAD_COMBINATIONS = {
    "by_domain+pipeline": (
        ("parallel.pipeline_parallel=2", "train.microbatch_schedule=by_domain"),
        2,
        ZERO1,
        "train.microbatch_schedule=by_domain is not supported with parallel.pipeline_parallel",
    ),
    "apply_loss+pipeline": (
        ("parallel.pipeline_parallel=2", "mixture.method=odm", "mixture.apply=loss"),
        2,
        ZERO1,
        "mixture.apply=loss is not supported with parallel.pipeline_parallel > 1",
    ),
    "reference+pipeline": (
        (
            "parallel.pipeline_parallel=2",
            "mixture.method=doremi",
            "mixture.reference_checkpoint=/some/step_000010",
        ),
        2,
        ZERO1,
        "mixture.reference_checkpoint) is not supported with parallel.pipeline_parallel > 1",
    ),
    "misspelt_domain": (
        ("data.domains=[code,prse]",),
        1,
        ZERO1,
        "data.domains names ['prse']",
    ),
    "unknown_task": (("targets.tasks=[legal_cloze,arc]",), 1, ZERO1, "targets.tasks names ['arc']"),
    "vocab_too_small": (("model.vocab_size=512",), 1, ZERO1, "model.vocab_size"),
    "missing_prefix": (
        ("data.prefixes={ghost: /nonexistent/ghost_text_document}",),
        1,
        ZERO1,
        "/nonexistent/ghost_text_document",
    ),
    "resume_path_missing": (
        ("checkpoint.resume=/nonexistent/step_000004",),
        1,
        ZERO1,
        "checkpoint.resume='/nonexistent/step_000004'",
    ),
    "initial_weights_file_missing": (
        ("mixture.method=grape", "mixture.initial=/nonexistent/weights.json"),
        1,
        ZERO1,
        "mixture.initial='/nonexistent/weights.json'",
    ),
}


@pytest.mark.parametrize("case", sorted(BAD_COMBINATIONS))
def test_preflight_rejects_every_known_bad_combination(test_corpus, tmp_path, case):
    overrides, world, ds_path, message = BAD_COMBINATIONS[case]
    cfg = tiny_config(test_corpus, tmp_path, "bad", *overrides)
    with pytest.raises((ConfigError, DataError)) as info:
        check(cfg, world, ds_path)
    assert message in str(info.value)
    assert not torch.distributed.is_initialized()
    assert not cfg.run_dir.exists(), "nothing may be written before the checks pass"


def test_gradient_method_without_targets_is_refused_once_before_training(test_corpus, tmp_path):
    cfg = tiny_config(
        test_corpus,
        tmp_path,
        "notargets",
        "data.corpus=",
        f"data.bin_dir={test_corpus / 'bin'}",
        f"data.tokenizer={test_corpus / 'tokenizer'}",
        "mixture.method=grape",
    )
    with pytest.raises(ConfigError, match="optimises the mixture for target tasks"):
        check(cfg)


def test_gradient_method_with_fp16_is_refused():
    from megagrape.train.preflight import _check_combinations

    cfg = load_config(None, ["mixture.method=grape"])
    grape = type("Method", (), {"needs": frozenset({"domain_target_gram"})})()
    with pytest.raises(ConfigError, match="fp16 keeps loss-scaled"):
        _check_combinations(cfg, {"fp16": {"enabled": True}}, 1, grape)
    assert _check_combinations(cfg, {"fp16": {"enabled": False}}, 1, grape) == "linear"


def test_prefix_that_shadows_a_bin_dir_domain_is_refused(test_corpus, tmp_path):
    cfg = tiny_config(
        test_corpus,
        tmp_path,
        "shadow",
        f"data.prefixes={{code: {test_corpus}/bin/prose_text_document}}",
    )
    with pytest.raises(ConfigError, match=r"data\.prefixes names domain 'code'"):
        check(cfg)


def test_preflight_accepts_a_good_launch_and_describes_it(test_corpus, tmp_path):
    cfg = tiny_config(test_corpus, tmp_path, "good", "mixture.method=grape")
    plan = check(cfg, world_size=2, ds_path="configs/ds/zero2.json")
    assert list(plan.domains) == ["code", "legal", "prose"]
    assert all(tokens > 10_000 for tokens in plan.domains.values())
    assert plan.targets == ["legal_cloze", "prose_cloze"]
    assert (plan.data_parallel, plan.gradient_accumulation, plan.zero_stage) == (2, 2, 2)
    assert plan.capture_mode == "probe"
    # GRAPE's default cosine products also need the gradient norms
    assert plan.method_needs == [
        "domain_sq_norms", "domain_target_gram", "target_gram", "target_losses"
    ]  # fmt: skip
    text = plan.describe()
    assert "world 2 = DP 2 x TP 1 x PP 1" in text and "legal_cloze" in text


@pytest.mark.parametrize(
    ("overrides", "ds_path", "mode"),
    [
        (("mixture.method=grape", "parallel.pipeline_parallel=2"), ZERO1, "pipeline"),
        (("mixture.method=doge",), "configs/ds/zero3.json", "partitioned"),
        (("mixture.method=mgda", "parallel.pipeline_parallel=2"), ZERO1, "pipeline"),
    ],
    ids=["grape+pipeline", "doge+zero3", "mgda+pipeline"],
)
def test_preflight_accepts_gradient_methods_on_every_layout(
    test_corpus, tmp_path, overrides, ds_path, mode
):
    cfg = tiny_config(test_corpus, tmp_path, "layout", *overrides)
    plan = check(cfg, world_size=2, ds_path=ds_path)
    assert plan.capture_mode == mode
    assert f"gradient capture: {mode}" in plan.describe()


# ----------------------------------------------------------------------- the command itself
def run_cli(*args: str, world_size: int = 1, timeout: float = 120):
    """Run tools/pretrain_grape.py as a launcher would start rank 0 of ``world_size`` ranks.

    With world_size 2 and no rank 1, anything that tried to start the process group would
    wait for the missing rank until ``timeout``: an exit within seconds proves it never did.
    """
    env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "RANK": "0",
        "LOCAL_RANK": "0",
        "WORLD_SIZE": str(world_size),
        "MASTER_ADDR": "127.0.0.1",
        "MASTER_PORT": str(free_port()),
    }
    started = time.monotonic()
    result = subprocess.run(
        [sys.executable, SCRIPT, *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    return result, time.monotonic() - started


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (
            ("parallel.pipeline_parallel=2", "mixture.method=odm", "mixture.apply=loss"),
            "parallel.pipeline_parallel > 1",
        ),
        (("data.domains=[code,prse]",), "data.domains names ['prse']"),
    ],
)
def test_bad_launch_exits_2_before_any_process_group(test_corpus, tmp_path, overrides, message):
    config = write_run_config(test_corpus, tmp_path, "bad")
    result, seconds = run_cli(
        "--ds_config", ZERO1, "--config", str(config), *overrides, world_size=2
    )
    assert result.returncode == 2, result.stderr[-2000:]
    assert message in result.stderr
    assert seconds < 60, f"took {seconds:.0f} s: the check must come before start-up"


def test_dry_run_checks_everything_and_starts_nothing(test_corpus, tmp_path):
    config = write_run_config(test_corpus, tmp_path, "dry", "mixture.method=grape")
    result, seconds = run_cli(
        "--ds_config", ZERO1, "--config", str(config), "--dry-run", world_size=2
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert "world 2 = DP 2 x TP 1 x PP 1" in result.stdout
    assert "code (" in result.stdout and "prose_cloze" in result.stdout
    assert "gradient capture: linear" in result.stdout
    assert not (tmp_path / "dry").exists()
    assert seconds < 60


def test_print_config_resolves_overrides_flags_and_method_defaults(test_corpus, tmp_path):
    config = write_run_config(test_corpus, tmp_path, "show")
    result, _seconds = run_cli(
        "--config",
        str(config),
        "--print-config",
        "mixture.method=grape",
        "mixture.options={mu_a: 0.5}",
        "--train.lr",
        "3e-4",
        "--data.domains",
        "code",
        "legal",
    )
    assert result.returncode == 0, result.stderr[-2000:]
    printed = yaml.safe_load(result.stdout)
    assert printed["train"]["lr"] == pytest.approx(3e-4)
    assert printed["data"]["domains"] == ["code", "legal"]
    options = printed["mixture"]["options"]
    assert options["mu_a"] == 0.5  # given
    grape_fields = {spec.name: spec.default for spec in dataclasses.fields(options_class("grape"))}
    assert set(options) == set(grape_fields)
    assert options["mu_z"] == grape_fields["mu_z"] and options["eps_a"] == grape_fields["eps_a"]


def test_config_yaml_of_a_run_records_every_method_default(tmp_path):
    cfg = load_config(None, ["mixture.method=doge", "mixture.options={mu: 0.02}"])
    save_config(cfg, tmp_path / "config.yaml")
    recorded = yaml.safe_load((tmp_path / "config.yaml").read_text())["mixture"]["options"]
    assert recorded["mu"] == 0.02
    assert set(recorded) == {spec.name for spec in dataclasses.fields(options_class("doge"))}
    assert load_config(tmp_path / "config.yaml").mixture.options == recorded  # loads back


def test_list_methods_shows_needs_options_and_defaults():
    result, _ = run_cli("--list-methods")
    assert result.returncode == 0, result.stderr[-2000:]
    for name in KNOWN_METHODS:
        assert f"\n{name} " in "\n" + result.stdout
    grape_line = "needs: domain_sq_norms, domain_target_gram, target_gram, target_losses"
    assert grape_line in result.stdout

    detail, _ = run_cli("--list-methods", "grape")
    assert detail.returncode == 0
    docs = field_docstrings(options_class("grape"))
    for spec in dataclasses.fields(options_class("grape")):
        assert f"  {spec.name} = {spec.default!r}" in detail.stdout
        assert docs[spec.name].splitlines()[0] in detail.stdout

    unknown, _ = run_cli("--list-methods", "grap")
    assert unknown.returncode == 2
    assert "did you mean 'grape'" in unknown.stderr


def test_help_lists_every_field_with_its_docstring():
    result, _ = run_cli("--help")
    assert result.returncode == 0, result.stderr[-2000:]
    flat = " ".join(result.stdout.replace("│", " ").split())
    cfg = RunConfig()
    sections = [("", RunConfig)] + [
        (f"{spec.name}.", type(getattr(cfg, spec.name)))
        for spec in dataclasses.fields(RunConfig)
        if dataclasses.is_dataclass(getattr(cfg, spec.name))
    ]
    for prefix, cls in sections:
        docs = field_docstrings(cls)
        owner = getattr(cfg, prefix[:-1]) if prefix else cfg
        for spec in dataclasses.fields(cls):
            if dataclasses.is_dataclass(getattr(owner, spec.name)):
                continue  # a section: its fields are checked on their own
            if f"{prefix}{spec.name}" == "mixture.options":
                assert "mixture.options: see --list-methods NAME" in flat  # per method
                continue
            assert f"--{prefix}{spec.name}" in flat, f"--{prefix}{spec.name} missing from --help"
            assert spec.name in docs, f"{cls.__name__}.{spec.name} has no docstring"
            first_words = " ".join(docs[spec.name].split()[:4])
            assert first_words in flat, f"docstring of {prefix}{spec.name} missing: {first_words}"


def test_split_overrides_keeps_the_two_spellings_apart():
    assert split_overrides(["train.lr=1", "--data.domains", "a", "b", "seed=3", "--x=1"]) == (
        ["train.lr=1", "seed=3"],
        ["--data.domains", "a", "b", "--x=1"],
    )
    with pytest.raises(ConfigError, match=r"neither section\.field=value"):
        split_overrides(["stray"])


WRITTEN_DIRS = ["output_dir", "data.cache_dir", "checkpoint.dir"]


@pytest.mark.parametrize("field", WRITTEN_DIRS)
def test_an_output_or_cache_dir_under_a_file_is_refused_up_front(test_corpus, tmp_path, field):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a directory")
    cfg = tiny_config(test_corpus, tmp_path, "w", f"{field}={blocker / 'sub'}")
    with pytest.raises(ConfigError, match=rf"{field}: .*a_file is a file"):
        check(cfg)


@pytest.mark.skipif(os.geteuid() == 0, reason="root ignores directory permissions")
@pytest.mark.parametrize("field", WRITTEN_DIRS)
def test_an_unwritable_output_or_cache_dir_is_refused_up_front(test_corpus, tmp_path, field):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        cfg = tiny_config(test_corpus, tmp_path, "w", f"{field}={locked / 'sub'}")
        with pytest.raises(ConfigError, match=rf"{field}: .*locked is not writable"):
            check(cfg)
    finally:
        locked.chmod(0o700)
