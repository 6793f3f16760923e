"""tools/convert_grape_config.py: GRAPE reference JSON configs to megagrape configs, faithfully or
not at all. The fixtures have the fields of the reference's own config files
(config/climb/*.json and config/wiki40b/*.json of Olivia-fsm/GRAPE_data_mixture_with_multi_target)."""

import importlib.util
import json
import math
import re
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from megagrape.config import load_config
from megagrape.errors import ConfigError
from megagrape.mixture import Observation, build_method

REPO = Path(__file__).resolve().parents[2]
_spec = importlib.util.spec_from_file_location(
    "convert_grape_config", REPO / "tools" / "convert_grape_config.py"
)
tool = importlib.util.module_from_spec(_spec)
sys.modules[_spec.name] = tool  # dataclasses look their module up
_spec.loader.exec_module(tool)

CLUSTERS = "cluster_1,cluster_2,cluster_3"
TASKS = "logiqa,piqa,arc_easy,arc_challenge,hellaswag,sciq"


def climb(**changes):
    """A config shaped like config/climb/grape_mu5.json (3 clusters instead of 20)."""
    config = {
        "dataset": "climb-logiqa-piqa-arc_easy-arc_challenge-hellaswag-sciq",
        "train_domains": CLUSTERS,
        "tgt_domains": TASKS,
        "max_steps": 50000,
        "train_dw": None,
        "tgt_dw": None,
        "val_dw": None,
        "max_train_samples": None,
        "max_eval_samples": 5000,
        "max_token_length": 512,
        "seed": 16,
        "preprocessing_num_workers": 4,
        "model_name_or_path": None,
        "model_type": "gpt2",
        "config_overrides": "n_positions=512,n_embd=768,n_layer=12,n_head=12",
        "run_name": "MAP-8tasks-684M",
        "output_dir": "./exp_climb",
        "do_train": True,
        "do_eval": True,
        "do_predict": False,
        "learning_rate": 1.5e-4,
        "weight_decay": 1e-2,
        "reweight_train": "doge",
        "reweight_tgt": "grape",
        "reweight_batch_size": 32,
        "reweight_mini_batch_size": 8,
        "reweight_train_iters": 100,
        "reweight_tgt_iters": 100,
        "ref_model": None,
        "lr_scheduler_name": "linear_warmup_cosine",
        "lr_end": 1.5e-5,
        "reweight_eps": 0.0,
        "mu_train": 1.5,
        "mu_tgt": 5.0,
        "max_grad_norm": 1.0,
        "per_device_train_batch_size": 16,
        "warmup_ratio": 0.05,
        "warmup_steps": 2000,
        "save_steps": 2000,
        "eval_steps": 500,
        "gradient_accumulation_steps": 2,
        "decay_rate": 0.20,
        "save_strategy": "steps",
        "eval_strategy": "steps",
        "logging_steps": 100,
        "logging_first_step": True,
        "save_total_limit": 10,
        "ddp_find_unused_parameters": False,
        "use_cpu": False,
        "compute_pertoken_losses": False,
        "overwrite_output_dir": False,
    }
    config.update(changes)
    return config


def wiki40b(**changes):
    """A config shaped like config/wiki40b/T1-wiki40b-ema.json."""
    config = climb(
        dataset="wiki40b-en-fr-de-es-it-ru-uk-ca-da-ro",
        train_domains="en,fr,de,es,it,ru",
        tgt_domains="uk,ca,da,ro",
        max_steps=20000,
        preprocessing_num_workers=2,
        config_overrides="vocab_size=200000,n_positions=512,n_embd=768,n_layer=6,n_head=12",
        run_name="MAP-125M",
        output_dir="./exp_wiki40b",
        learning_rate=5e-4,
        reweight_tgt="grape_ema",
        lr_end=1e-4,
        ema_beta=0.9,
        max_grad_norm=2.0,
        warmup_steps=500,
        save_steps=5000,
        logging_steps=50,
        evaluation_strategy="steps",
    )
    for key in ("reweight_batch_size", "reweight_mini_batch_size", "decay_rate"):
        del config[key]
    for key in ("eval_strategy", "logging_first_step"):
        del config[key]
    config.update(changes)
    return config


def run_tool(tmp_path, reference, *args, capsys):
    src = tmp_path / "ref.json"
    src.write_text(json.dumps(reference))
    out = tmp_path / "out.yaml"
    code = tool.main([str(src), "--out", str(out), "--corpus", "data/climb", *args])
    captured = capsys.readouterr()
    return code, out, captured.out, captured.err


def converted(reference, gpus=2):
    return tool.convert(reference, gpus, "data/climb")


def test_grape_mu5_converts_every_field_it_reads(tmp_path, capsys):
    code, out, stdout, stderr = run_tool(tmp_path, climb(), "--gpus", "2", capsys=capsys)
    assert code == 0, stderr
    cfg = load_config(out)
    assert (cfg.name, cfg.seed, cfg.output_dir) == ("MAP-8tasks-684M", 16, "./exp_climb")
    assert cfg.mixture.method == "grape" and cfg.mixture.interval == 100
    assert cfg.mixture.options == {
        "mu_a": 1.5,
        "eps_a": 0.0,  # the reference's domain step has no smoothing
        "roi": "first_order",
        "mu_z": 5.0,
        "eps_z": 0.001,  # hard-coded in the reference's task step
        "target_gradient": "log",
        "gradient_scaling": "clip",  # get_grad_backward clips to max_grad_norm
        "clip_norm": 1.0,
    }
    m = cfg.model
    assert (m.num_layers, m.hidden_size, m.num_attention_heads, m.seq_length) == (12, 768, 12, 512)
    assert (m.vocab_size, m.make_vocab_size_divisible_by) == (50257, 1)
    assert (m.hidden_dropout, m.attention_dropout) == (0.1, 0.1)  # GPT2Config defaults
    assert m.position_embedding == "learned_absolute" and m.tie_embeddings
    t = cfg.train
    assert (t.train_iters, t.lr, t.min_lr, t.lr_warmup_iters) == (50000, 1.5e-4, 1.5e-5, 2000)
    assert (t.lr_decay_style, t.weight_decay, t.clip_grad) == ("cosine", 0.01, 1.0)
    assert (t.adam_beta1, t.adam_beta2, t.adam_eps) == (0.9, 0.999, 1e-8)  # HF AdamW
    assert (t.micro_batch_size, t.global_batch_size) == (16, 64)
    assert cfg.data.domains == ["cluster_1", "cluster_2", "cluster_3"]
    assert cfg.targets.tasks == TASKS.split(",")
    assert (cfg.targets.signal_batch_size, cfg.targets.eval_max_items) == (8, 5000)
    assert cfg.targets.eval_interval == 500
    assert (cfg.checkpoint.interval, cfg.checkpoint.keep_last) == (2000, 10)
    assert cfg.checkpoint.resume == "auto" and cfg.logging.interval == 100
    for key in ("dataset", "reweight_eps", "reweight_batch_size", "decay_rate", "val_dw"):
        assert f"ignored {key}: " in stdout
    assert "must be the --corpus" in stdout


def test_doge_config_keeps_task_weights_fixed_as_the_reference():
    # config/climb/doge.json: reweight_tgt_iters = -1, and the reference runs its task step
    # only when reweight_tgt_iters > 0: z stays at tgt_dw (uniform) all run.
    result = converted(climb(reweight_tgt_iters=-1))
    mixture = result.config["mixture"]
    assert mixture["method"] == "grape" and mixture["interval"] == 100
    options = mixture["options"]
    assert (options["mu_z"], options["eps_z"], options["mu_a"]) == (0.0, 0.0, 1.5)
    assert options["target_gradient"] == "log"  # reweight_tgt: grape -> grad log of targets
    assert ("mu_tgt", "z is fixed (reweight_tgt_iters <= 0)") in result.ignored


def reference_domain_step(alpha, products, z, mu_train):
    """trainer.py domain_reweight_step: log α + mu_train * <g_k, g_tgt>, softmax, no smoothing."""
    logits = np.log(alpha) + mu_train * (products @ z)
    e = np.exp(logits - logits.max())
    return e / e.sum()


@pytest.mark.parametrize(
    ("reweight_tgt", "log"), [("grape", True), ("grape_gap", False), (None, False)]
)
def test_doge_config_takes_the_reference_step_size_and_target_gradient(reweight_tgt, log):
    # The step is mu_train times the product, whatever the model lr (megagrape's doge would
    # multiply by lr: thousands of times smaller). grape/grape_ema differentiate log l, other
    # values the plain loss.
    reference = climb(reweight_tgt_iters=-1, reweight_tgt=reweight_tgt)
    options = converted(reference).config["mixture"]["options"]
    tasks = TASKS.split(",")
    method = build_method("grape", options, CLUSTERS.split(","), tasks, None, None)
    rng = np.random.default_rng(3)
    g = rng.normal(size=(3, 10)) * 0.05  # norms below clip_norm = 1: clipping does not bite
    t = rng.normal(size=(6, 10)) * 0.05
    losses = rng.uniform(2.0, 4.0, size=6)
    obs = Observation(
        step=100,
        lr=1.5e-4,
        domain_target_gram=torch.tensor(g @ t.T),
        target_losses=torch.tensor(losses),
        domain_sq_norms=torch.tensor((g * g).sum(1)),
        target_gram=torch.tensor(t @ t.T),
    )
    update = method.update(obs)
    h = t / losses[:, None] if log else t
    expected = reference_domain_step(np.full(3, 1 / 3), g @ h.T, np.full(6, 1 / 6), 1.5)
    np.testing.assert_allclose(update.domain_weights.numpy(), expected, rtol=1e-12)
    assert update.task_weights.tolist() == pytest.approx([1 / 6] * 6, abs=1e-15)


def test_wiki40b_ema_uses_ema_in_the_task_step_and_log_in_the_domain_step():
    result = converted(wiki40b())
    options = result.config["mixture"]["options"]
    assert options["target_gradient"] == "ema"
    assert options["domain_target_gradient"] == "log"
    assert options["loss_ema_decay"] == 0.9 and options["clip_norm"] == 2.0
    model = result.config["model"]
    assert (model["vocab_size"], model["num_layers"]) == (200000, 6)
    # reweight_mini_batch_size missing: the reference's default 8
    assert result.config["targets"]["signal_batch_size"] == 8
    assert result.config["targets"]["eval_interval"] == 500  # evaluation_strategy: steps


def test_gap_config_uses_plain_target_gradients():
    options = converted(wiki40b(reweight_tgt="grape_gap")).config["mixture"]["options"]
    assert options["target_gradient"] == "plain" and "domain_target_gradient" not in options
    assert "loss_ema_decay" not in options


def test_base_crisp_and_climb_initialised_grape(tmp_path, capsys):
    base = converted(climb(reweight_train_iters=-1, reweight_tgt_iters=-1)).config["mixture"]
    assert base == {"method": "static", "options": {"source": "uniform"}}
    weights = "0.5,0.3,0.2"
    crisp = climb(reweight_train_iters=-1, reweight_tgt_iters=-1, train_dw=weights)
    code, out, _, stderr = run_tool(tmp_path, crisp, capsys=capsys)
    assert code == 0, stderr
    assert load_config(out).mixture.options == {"source": "inline", "weights": [0.5, 0.3, 0.2]}
    code, out, _, stderr = run_tool(tmp_path, climb(train_dw="0.7,0.3,0.0"), capsys=capsys)
    assert code == 0, stderr
    cfg = load_config(out)
    initial = json.loads(Path(cfg.mixture.initial).read_text())
    assert initial == {"cluster_1": 0.7, "cluster_2": 0.3, "cluster_3": 0.0}
    assert cfg.mixture.options["eps_a"] == 0.0  # as the reference: a zero domain stays at 0


def test_missing_fields_take_the_reference_defaults():
    reference = climb()
    for key in ("seed", "lr_scheduler_name", "warmup_steps", "mu_tgt", "weight_decay"):
        del reference[key]
    result = converted(reference)
    assert result.config["seed"] == 42  # HF TrainingArguments
    assert result.config["train"]["lr_decay_style"] == "cosine"  # linear_warmup_cosine
    assert result.config["train"]["lr_warmup_iters"] == math.ceil(0.05 * 50000)  # warmup_ratio
    assert result.config["train"]["weight_decay"] == 0.0
    assert result.config["mixture"]["options"]["mu_z"] == 1e-4  # the reference's mu_tgt default


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        (
            "linear_warmup_decay",
            {"lr_decay_style": "wsd", "lr_wsd_decay_style": "linear", "lr_wsd_decay_iters": 10000},
        ),
        (
            "linear_decay",
            {"lr_decay_style": "linear", "lr_decay_iters": 10000, "lr_warmup_iters": 0},
        ),
        ("cosine", {"lr_decay_style": "cosine", "min_lr": 0.0, "lr_warmup_iters": 2000}),
        ("constant", {"lr_decay_style": "constant", "lr_warmup_iters": 0}),
    ],
)
def test_schedules(name, expected):
    train = converted(climb(lr_scheduler_name=name)).config["train"]
    assert {key: train[key] for key in expected} == expected


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        (
            {"reweight_tgt_iters": 50},
            r"reweight_tgt_iters=50: megagrape runs both GRAPE steps at one mixture\.interval",
        ),
        ({"reweight_train_iters": -1}, r"reweight_train_iters=-1: only the task weights"),
        ({"reweight_tgt": "grape_offline"}, r"reweight_tgt='grape_offline'"),
        ({"reweight_train": "doremi"}, r"reweight_train='doremi': the reference never reads"),
        ({"lr_scheduler_name": "linear_warmup_exponential"}, r"lr_scheduler_name='linear_warmup_"),
        ({"lr_scheduler_name": "polynomial"}, r"lr_scheduler_name='polynomial': no megagrape"),
        ({"max_train_samples": 1000}, r"max_train_samples=1000: megagrape does not cap"),
        (
            {"model_name_or_path": "gpt2"},
            r"model_name_or_path='gpt2': megagrape trains from scratch",
        ),
        ({"model_type": "llama"}, r"model_type='llama'"),
        ({"ref_model": "ckpt/ref"}, r"ref_model='ckpt/ref'"),
        ({"num_train_epochs": 3}, r"num_train_epochs=3: this field is not known to the converter"),
        (
            {"config_overrides": "n_embd=768,scale_attn_weights=false"},
            r"config_overrides='scale_attn_weights=false': megagrape has no equivalent",
        ),
        ({"config_overrides": "n_positions=256"}, r"n_positions=256.*fewer positions"),
        ({"config_overrides": "embd_pdrop=0.0"}, r"embd_pdrop=0\.0.*one hidden dropout"),
        ({"max_steps": -1}, r"max_steps=-1: the reference then trains by epochs"),
        ({"save_strategy": "epoch"}, r"save_strategy='epoch'"),
        ({"val_domains": "piqa"}, r"val_domains='piqa'"),
    ],
)
def test_what_megagrape_cannot_reproduce_is_refused_naming_the_field(
    tmp_path, capsys, changes, message
):
    code, _, _, stderr = run_tool(tmp_path, climb(**changes), capsys=capsys)
    assert code == 2
    assert stderr.startswith("convert_grape_config: ")
    assert re.search(message, stderr), stderr
    with pytest.raises(ConfigError, match=message):
        converted(climb(**changes))


def test_every_field_of_the_reference_shapes_is_converted_refused_or_knowingly_ignored():
    # convert() raises RuntimeError for a field it read neither as converted nor as ignored;
    # every ignored field is one the tool's docstring lists.
    shapes = (
        climb(),
        wiki40b(),
        climb(reweight_tgt_iters=-1),
        climb(reweight_train_iters=-1, reweight_tgt_iters=-1),
    )
    for reference in shapes:
        result = converted(reference)
        for key, _ in result.ignored:
            assert f"``{key}``" in tool.__doc__, key
