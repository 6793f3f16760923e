"""Convert a GRAPE reference-project JSON config into a megagrape run config (YAML).

    python tools/convert_grape_config.py config/climb/grape_mu5.json --gpus 2 --corpus data/climb --out configs/mine.yaml

The reference project (Olivia-fsm/GRAPE_data_mixture_with_multi_target, ``src/run.py`` and
``src/trainer.py``) configures a run with flat JSON fields read into HF ``TrainingArguments``
plus its own dataclasses. Every field of the JSON is either converted to the megagrape field
that does the same thing, refused with an error naming the field and what to do (megagrape
cannot express it), or listed below as knowingly ignored. A field the tool does not know is
refused. A field missing from the JSON takes the reference's default (not megagrape's).

How the reference behaves, and what it becomes:

* **When the weights move.** The domain step runs iff ``reweight_train_iters > 0``, the task
  step iff ``reweight_tgt_iters > 0`` (``trainer.py``: ``if self.reweight_*_iters > 0 and
  ...``); ``reweight_train`` is never read. Both <= 0: a static mixture (``train_dw`` or
  uniform). Both > 0: GRAPE, which needs ONE interval (different intervals are refused).
  Domain step only (the shipped DoGE configs, ``reweight_tgt_iters: -1``): GRAPE with z fixed
  at ``tgt_dw`` (``mu_z: 0, eps_z: 0``); the domain step is then exactly the reference's.
  Task step only: refused (it would not change training).
* **Step sizes.** The domain step is ``log α + mu_train * <g_k, h>`` with no smoothing
  (``mu_a = mu_train, eps_a = 0``); the task step ``log z - mu_tgt * <h_n, d>`` then
  ``0.999 z + 0.001 / N`` (``mu_z = mu_tgt, eps_z = 0.001``). No model-lr factor: both are
  megagrape's GRAPE step exactly (megagrape's ``doge`` multiplies its score by the model lr, so
  it is not used).
* **Target gradient** (``reweight_tgt``): ``grape``: grad log l in both steps
  (``target_gradient: log``); ``grape_ema``: grad l / EMA_{ema_beta}(l) in the task step, grad
  log l in the domain step (``target_gradient: ema, domain_target_gradient: log,
  loss_ema_decay: ema_beta``); ``grape_gap`` and null/none: the plain gradient in both
  (``plain``). ``grape_offline`` (its RoI sign up-weights improving tasks) is refused.
* **Clipping.** Every reweighting gradient is clipped to ``max_grad_norm`` before its dot
  products (``get_grad_backward``): ``gradient_scaling: clip, clip_norm: max_grad_norm``
  (raw when max_grad_norm <= 0). It also clips the training step (``train.clip_grad``).
* **Model.** HF ``GPT2Config()`` updated with ``config_overrides``: learned absolute positions,
  LayerNorm (eps 1e-5), GELU, biases, tied embeddings, dropout 0.1 (resid/embd/attn), init std
  0.02, vocabulary 50257 unpadded; ``max_token_length`` tokens per sample (``n_positions``
  must be >= it). Optimiser: HF AdamW (0.9, 0.999, 1e-8).
* **Schedule** (``lr_scheduler_name``; the reference's ``schedulers.py``): linear_warmup_cosine
  -> cosine to ``lr_end``; linear_warmup_decay -> wsd, constant then linear to ``lr_end`` over
  the last int(decay_rate * max_steps) steps; linear_decay -> linear from step 0 (no warmup) to
  ``lr_end`` at int(decay_rate * max_steps); HF linear/cosine -> to 0; constant(_with_warmup).
  linear_warmup_exponential (decays lr - lr_end to 1e-10, a shape megagrape has not) is
  refused. Warmup: ``warmup_steps``, or ceil(warmup_ratio * max_steps) when it is 0.
* **Batches.** micro batch = per_device_train_batch_size; global = micro x
  gradient_accumulation_steps x ``--gpus``. Per-task signal batch = reweight_mini_batch_size.

Known differences that remain (printed with every conversion): megagrape uses the exact
z-weighted target direction sum_n z_n h_n and takes g_k from the step's training batch, where
the reference samples ``reweight_batch_size / reweight_mini_batch_size`` mixture mini-batches
(and clips each of those, where megagrape clips each g_k and h_n); its events run after steps
R, 2R, ... where the reference's run after steps R-1, 2R-1, ...; its warmup starts at lr / W
where the reference's starts at 1e-7; GELU is the exact form where GPT-2 uses the tanh
approximation; the precision comes from the DeepSpeed config (the reference trains in fp32).

Knowingly ignored fields (no effect on what is trained, or replaced by a megagrape input):

* ``dataset``, ``dataset_dir``: the data are ``--corpus`` (the dataset name is printed);
* ``preprocessing_num_workers``, ``overwrite_cache``, ``do_padding``, ``shuffle``: tokenisation
  and loading (megagrape's corpus is pre-tokenised; its sampler fixes the order by seed);
* ``reweight_batch_size``: the number of mixture mini-batches, see the differences above;
* ``reweight_eps``: read only by ``grape_offline`` (refused); ``val_dw``: weights of the
  logged validation mixture; ``compute_pertoken_losses``: how losses are computed;
* ``do_eval``, ``logging_first_step``, ``logging_dir``, ``report_to``, ``disable_tqdm``,
  ``include_num_input_tokens_seen``, ``wandb_run``: logging;
* ``ddp_find_unused_parameters``, ``ddp_backend``, ``use_cpu``, ``local_rank``,
  ``dataloader_num_workers``: the launcher and device (megagrape's launcher decides);
* fields a setting makes unused in the reference (reported as such): ``mu_tgt`` with z fixed;
  ``mu_train``, ``mu_tgt``, ``reweight_tgt``, ``ema_beta`` and ``tgt_dw`` of a static mixture;
  ``ema_beta`` without grape_ema; ``decay_rate`` and ``lr_end`` of schedules that do not read
  them; ``warmup_ratio`` when ``warmup_steps`` > 0; ``lr_scheduler_type`` when
  ``lr_scheduler_name`` is set.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from megagrape.config import load_config
from megagrape.errors import ConfigError

# The reference's defaults (its dataclasses and HF TrainingArguments) for fields it reads.
REFERENCE_DEFAULTS: dict[str, Any] = {
    "train_domains": "arxiv,book,cc,c4,github,stackexchange,wikipedia",
    "tgt_domains": "logiqa,piqa,arc_easy,arc_challenge,hellaswag,sciq,kodcode,gsm8k",
    "val_domains": None,
    "train_dw": None,
    "tgt_dw": None,
    "max_train_samples": None,
    "max_eval_samples": None,
    "max_token_length": 512,
    "model_type": "gpt2",
    "model_name_or_path": None,
    "config_name": None,
    "config_overrides": "n_positions=512,n_embd=768,n_layer=12,n_head=12",
    "ref_model": None,
    "reweight_train": "doge",
    "reweight_tgt": "grape",
    "reweight_train_iters": 10,
    "reweight_tgt_iters": 100,
    "mu_train": 0.001,
    "mu_tgt": 0.0001,
    "reweight_mini_batch_size": 8,
    "ema_beta": 0.9,
    "lr_scheduler_name": "linear_warmup_cosine",
    "lr_scheduler_type": "linear",
    "lr_end": 1e-4,
    "decay_rate": 0.1,
    # HF TrainingArguments
    "max_steps": -1,
    "learning_rate": 5e-5,
    "weight_decay": 0.0,
    "adam_beta1": 0.9,
    "adam_beta2": 0.999,
    "adam_epsilon": 1e-8,
    "max_grad_norm": 1.0,
    "warmup_steps": 0,
    "warmup_ratio": 0.0,
    "per_device_train_batch_size": 8,
    "gradient_accumulation_steps": 1,
    "seed": 42,
    "do_train": False,
    "do_predict": False,
    "save_strategy": "steps",
    "save_steps": 500,
    "save_total_limit": None,
    "eval_strategy": "no",
    "eval_steps": None,
    "logging_steps": 500,
    "overwrite_output_dir": False,
}

# HF GPT2Config() defaults, the base that config_overrides updates.
GPT2_DEFAULTS: dict[str, Any] = {
    "vocab_size": 50257,
    "n_positions": 1024,
    "n_embd": 768,
    "n_layer": 12,
    "n_head": 12,
    "n_inner": None,
    "activation_function": "gelu_new",
    "resid_pdrop": 0.1,
    "embd_pdrop": 0.1,
    "attn_pdrop": 0.1,
    "layer_norm_epsilon": 1e-5,
    "initializer_range": 0.02,
    "tie_word_embeddings": True,
}
GELU_NAMES = ("gelu_new", "gelu", "gelu_pytorch_tanh", "gelu_fast")

IGNORED: dict[str, str] = {
    "dataset": "the training data are --corpus",
    "dataset_dir": "the training data are --corpus",
    "preprocessing_num_workers": "tokenisation (megagrape's corpus is pre-tokenised)",
    "overwrite_cache": "tokenisation cache",
    "do_padding": "collation (megagrape's samples are full sequences)",
    "shuffle": "loading order (megagrape's sampler fixes it by seed)",
    "reweight_batch_size": "megagrape takes the mixture direction from the training batch",
    "reweight_eps": "read by the reference only for grape_offline",
    "val_dw": "weights of the reference's logged validation mixture",
    "compute_pertoken_losses": "how the reference computes its losses",
    "do_eval": "logging (megagrape evaluates at targets.eval_interval and at the end)",
    "logging_first_step": "logging",
    "logging_dir": "logging",
    "report_to": "logging",
    "disable_tqdm": "logging",
    "include_num_input_tokens_seen": "logging",
    "wandb_run": "logging",
    "ddp_find_unused_parameters": "launcher/device",
    "ddp_backend": "launcher/device",
    "use_cpu": "launcher/device",
    "local_rank": "launcher/device",
    "dataloader_num_workers": "launcher/device",
}

SCHEDULES = (
    "linear_warmup_cosine",
    "linear_warmup_decay",
    "linear_decay",
    "linear",
    "cosine",
    "constant",
    "constant_with_warmup",
)
NULL_TARGET_METHODS = (None, "", "none", "None", "null")
KNOWN_DIFFERENCES = (
    "target direction: exact sum_n z_n h_n and g_k from the training batch (the reference "
    "samples and clips mixture mini-batches)",
    "events after steps R, 2R, ... (the reference: R-1, 2R-1, ...)",
    "warmup starts at lr / W (the reference: 1e-7); GELU exact (GPT-2: tanh approximation)",
    "precision comes from the DeepSpeed config (the reference trains in fp32)",
)


def refuse(field_name: str, value: Any, why: str) -> ConfigError:
    """The error for a reference field megagrape cannot reproduce."""
    return ConfigError(f"{field_name}={value!r}: {why}")


def _names(value: Any) -> list[str]:
    if isinstance(value, str):
        return [v.strip() for v in value.split(",") if v.strip()]
    return [str(v) for v in value or []]


def _weights(value: Any) -> list[float]:
    if isinstance(value, str):
        return [float(v) for v in value.split(",") if v.strip()]
    return [float(v) for v in value]


def _parse_override(text: str, value: str) -> Any:
    """One ``config_overrides`` value, typed like the GPT2Config default it replaces."""
    default = GPT2_DEFAULTS[text]
    if isinstance(default, bool):
        if value.lower() not in ("true", "false"):
            raise refuse("config_overrides", f"{text}={value}", "expected true or false")
        return value.lower() == "true"
    if isinstance(default, int) or (default is None and text == "n_inner"):
        return int(value)
    if isinstance(default, float):
        return float(value)
    return value


def gpt2_config(overrides: str | None) -> dict[str, Any]:
    """GPT2Config() updated from ``config_overrides`` ("k=v,k=v", HF update_from_string)."""
    config = dict(GPT2_DEFAULTS)
    for item in (overrides or "").split(","):
        if not item.strip():
            continue
        key, sep, value = item.partition("=")
        key = key.strip()
        if not sep or key not in GPT2_DEFAULTS:
            raise refuse(
                "config_overrides",
                item,
                f"megagrape has no equivalent of GPT-2 config field {key!r} known to this tool; "
                f"supported: {', '.join(GPT2_DEFAULTS)}",
            )
        config[key] = _parse_override(key, value.strip())
    return config


@dataclass
class Conversion:
    """The megagrape config and what became of every reference field."""

    config: dict[str, Any]
    mapped: list[tuple[str, str]] = field(default_factory=list)
    ignored: list[tuple[str, str]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


class _Converter:
    def __init__(self, reference: dict[str, Any], gpus: int, corpus: str) -> None:
        self.reference = reference
        self.gpus = gpus
        self.result = Conversion(
            config={
                "data": {"corpus": corpus},
                "model": {},
                "train": {},
                "targets": {},
                "mixture": {},
                "checkpoint": {},
                "logging": {},
            }
        )
        self.handled: set[str] = set()

    def get(self, key: str) -> Any:
        self.handled.add(key)
        return self.reference.get(key, REFERENCE_DEFAULTS.get(key))

    def put(self, source: str, target: str, value: Any) -> None:
        section, _, key = target.partition(".")
        if key:
            self.result.config.setdefault(section, {})[key] = value
        else:
            self.result.config[section] = value
        self.result.mapped.append((source, f"{target} = {value!r}"))

    def unused(self, key: str, why: str) -> None:
        self.handled.add(key)
        if key in self.reference:
            self.result.ignored.append((key, why))

    def require(self, key: str, allowed: tuple, why: str) -> None:
        value = self.get(key)
        if value not in allowed:
            raise refuse(key, value, why)

    # ------------------------------------------------------------------ sections
    def run(self) -> Conversion:
        unknown = [
            key
            for key in self.reference
            if key not in REFERENCE_DEFAULTS
            and key not in IGNORED
            and key not in ("run_name", "output_dir", "wandb_proj", "evaluation_strategy")
        ]
        if unknown:
            raise refuse(
                unknown[0],
                self.reference[unknown[0]],
                "this field is not known to the converter, so its effect cannot be reproduced; "
                "remove it from the JSON if the reference ignores it, or configure megagrape by "
                "hand",
            )
        self.identity()
        self.model()
        self.optimisation()
        self.schedule()
        self.mixture()
        self.outputs()
        for key, why in IGNORED.items():
            self.unused(key, why)
        self.result.notes += list(KNOWN_DIFFERENCES)
        config = {k: v for k, v in self.result.config.items() if v != {}}
        self.result.config = config
        missed = sorted(set(self.reference) - self.handled)
        if missed:  # a bug of this tool: every known field must be converted or ignored
            raise RuntimeError(f"fields neither converted nor ignored: {missed}")
        return self.result

    def identity(self) -> None:
        if "run_name" in self.reference:
            self.put("run_name", "name", str(self.get("run_name")))
        if "output_dir" in self.reference:
            self.put("output_dir", "output_dir", str(self.get("output_dir")))
        self.put("seed", "seed", int(self.get("seed")))
        self.require("do_train", (True,), "megagrape trains; set do_train: true")
        self.require(
            "do_predict", (False, None), "megagrape has no predict stage; set do_predict: false"
        )
        self.put("train_domains", "data.domains", _names(self.get("train_domains")))
        tasks = _names(self.get("tgt_domains"))
        self.put("tgt_domains", "targets.tasks", tasks)
        val = self.get("val_domains")
        if val is not None and _names(val) != tasks:
            raise refuse(
                "val_domains",
                val,
                "megagrape evaluates its target tasks (tgt_domains); other validation sets "
                "have no equivalent: drop val_domains or make it equal to tgt_domains",
            )
        for key, why in (
            ("max_train_samples", "megagrape does not cap samples per domain; set it to null"),
            ("ref_model", "GRAPE/DoGE do not use a reference model; set it to null"),
            ("model_name_or_path", "megagrape trains from scratch; set it to null"),
            ("config_name", "megagrape trains from scratch; use config_overrides"),
        ):
            if self.get(key) is not None:
                raise refuse(key, self.get(key), why)
        evals = self.get("max_eval_samples")
        if evals is not None:
            self.put("max_eval_samples", "targets.eval_max_items", int(evals))
        self.put(
            "reweight_mini_batch_size",
            "targets.signal_batch_size",
            int(self.get("reweight_mini_batch_size")),
        )
        if "dataset" in self.reference:
            self.result.notes.append(
                f"the reference's dataset {self.reference['dataset']!r} must be the --corpus"
            )

    def model(self) -> None:
        self.require("model_type", ("gpt2",), "megagrape converts GPT-2 models only")
        gpt2 = gpt2_config(self.get("config_overrides"))
        length = int(self.get("max_token_length"))
        if gpt2["n_positions"] < length:
            raise refuse(
                "config_overrides",
                f"n_positions={gpt2['n_positions']}",
                f"fewer positions than max_token_length={length}; the reference cannot train "
                "on such samples",
            )
        if gpt2["embd_pdrop"] != gpt2["resid_pdrop"]:
            raise refuse(
                "config_overrides",
                f"embd_pdrop={gpt2['embd_pdrop']}",
                "megatron applies one hidden dropout to the embeddings and the residual "
                f"branches; make it equal to resid_pdrop={gpt2['resid_pdrop']}",
            )
        if gpt2["activation_function"] not in GELU_NAMES:
            raise refuse(
                "config_overrides",
                f"activation_function={gpt2['activation_function']}",
                "megagrape's GPT-2 layers use GELU only",
            )
        source = "config_overrides/GPT2Config"
        for target, value in (
            ("num_layers", gpt2["n_layer"]),
            ("hidden_size", gpt2["n_embd"]),
            ("num_attention_heads", gpt2["n_head"]),
            ("ffn_hidden_size", gpt2["n_inner"]),
            ("vocab_size", gpt2["vocab_size"]),
            ("make_vocab_size_divisible_by", 1),
            ("position_embedding", "learned_absolute"),
            ("normalization", "LayerNorm"),
            ("layernorm_epsilon", gpt2["layer_norm_epsilon"]),
            ("activation", "gelu"),
            ("add_bias_linear", True),
            ("hidden_dropout", gpt2["resid_pdrop"]),
            ("attention_dropout", gpt2["attn_pdrop"]),
            ("init_method_std", gpt2["initializer_range"]),
            ("tie_embeddings", gpt2["tie_word_embeddings"]),
        ):
            if value is not None:
                self.put(source, f"model.{target}", value)
        self.put("max_token_length", "model.seq_length", length)
        if gpt2["n_positions"] > length:
            self.result.notes.append(
                f"n_positions={gpt2['n_positions']} > max_token_length={length}: the reference's "
                "extra positions are never used; megagrape's table has max_token_length"
            )

    def optimisation(self) -> None:
        steps = int(self.get("max_steps"))
        if steps <= 0:
            raise refuse(
                "max_steps", steps, "the reference then trains by epochs; give max_steps > 0"
            )
        self.put("max_steps", "train.train_iters", steps)
        self.put("learning_rate", "train.lr", float(self.get("learning_rate")))
        self.put("weight_decay", "train.weight_decay", float(self.get("weight_decay")))
        self.put("adam_beta1", "train.adam_beta1", float(self.get("adam_beta1")))
        self.put("adam_beta2", "train.adam_beta2", float(self.get("adam_beta2")))
        self.put("adam_epsilon", "train.adam_eps", float(self.get("adam_epsilon")))
        clip = self.get("max_grad_norm")
        self.put("max_grad_norm", "train.clip_grad", float(clip) if clip and clip > 0 else 0.0)
        micro = int(self.get("per_device_train_batch_size"))
        accumulation = int(self.get("gradient_accumulation_steps"))
        self.put("per_device_train_batch_size", "train.micro_batch_size", micro)
        self.put(
            f"gradient_accumulation_steps (x {self.gpus} GPUs)",
            "train.global_batch_size",
            micro * accumulation * self.gpus,
        )

    def schedule(self) -> None:
        steps = int(self.get("max_steps"))
        name = self.get("lr_scheduler_name")
        if name is None:
            name = self.get("lr_scheduler_type")
        else:
            self.unused("lr_scheduler_type", "lr_scheduler_name takes precedence")
        if name == "linear_warmup_exponential":
            raise refuse(
                "lr_scheduler_name",
                name,
                "the reference decays lr - lr_end geometrically to 1e-10 (reaching lr_end "
                "almost at once); megagrape's exponential decays lr * (min_lr / lr)**p: use "
                "linear_warmup_cosine or configure train.lr_decay_style by hand",
            )
        if name not in SCHEDULES:
            raise refuse(
                "lr_scheduler_name", name, f"no megagrape equivalent; known: {', '.join(SCHEDULES)}"
            )
        warmup_steps, ratio = int(self.get("warmup_steps")), float(self.get("warmup_ratio"))
        warmup = warmup_steps if warmup_steps > 0 else math.ceil(steps * ratio)
        if warmup_steps > 0:
            self.unused("warmup_ratio", "warmup_steps > 0 takes precedence (HF)")
        lr_end, decay_rate = float(self.get("lr_end")), float(self.get("decay_rate"))
        source = "lr_scheduler_name"
        if name in ("linear_warmup_decay", "linear_decay") and int(decay_rate * steps) <= 0:
            raise refuse(
                "decay_rate", decay_rate, f"int(decay_rate * max_steps) must be >= 1 for {name}"
            )
        if name == "linear_warmup_cosine":
            self.put(source, "train.lr_decay_style", "cosine")
            self.put("lr_end", "train.min_lr", lr_end)
        elif name == "linear_warmup_decay":
            self.put(source, "train.lr_decay_style", "wsd")
            self.put(source, "train.lr_wsd_decay_style", "linear")
            self.put("decay_rate", "train.lr_wsd_decay_iters", int(decay_rate * steps))
            self.put("lr_end", "train.min_lr", lr_end)
        elif name == "linear_decay":
            self.put(source, "train.lr_decay_style", "linear")
            self.put("decay_rate", "train.lr_decay_iters", int(decay_rate * steps))
            self.put("lr_end", "train.min_lr", lr_end)
            if warmup:
                self.result.notes.append("linear_decay has no warmup in the reference: none here")
            warmup = 0
        else:  # HF's own schedules: they decay to 0 and read neither lr_end nor decay_rate
            style = "constant" if name.startswith("constant") else name
            self.put(source, "train.lr_decay_style", style)
            self.put(source, "train.min_lr", 0.0)
            if name == "constant":
                warmup = 0
        if name not in ("linear_warmup_decay", "linear_decay"):
            self.unused("decay_rate", f"{name} does not read it")
        if name in ("linear", "cosine", "constant", "constant_with_warmup"):
            self.unused("lr_end", f"HF's {name} schedule does not read it")
        self.put("warmup_steps/warmup_ratio", "train.lr_warmup_iters", warmup)

    def mixture(self) -> None:
        train_iters = int(self.get("reweight_train_iters") or 0)
        target_iters = int(self.get("reweight_tgt_iters") or 0)
        train_dw = self.get("train_dw")
        weights = _weights(train_dw) if train_dw is not None else None
        target_method = self.get("reweight_tgt")
        self.require(
            "reweight_train",
            ("doge",),
            "the reference never reads reweight_train (its domain step runs iff "
            "reweight_train_iters > 0, with GRAPE's update); set it to 'doge' to confirm that",
        )
        if train_iters <= 0 and target_iters <= 0:
            options = {"source": "inline", "weights": weights} if weights else {"source": "uniform"}
            self.put("reweight_*_iters <= 0 (no reweighting)", "mixture.method", "static")
            self.put("train_dw", "mixture.options", options)
            for key in ("mu_train", "mu_tgt", "reweight_tgt", "tgt_dw", "ema_beta"):
                self.unused(key, "no reweighting in the reference (both reweight_*_iters <= 0)")
            return
        if train_iters <= 0:
            raise refuse(
                "reweight_train_iters",
                train_iters,
                f"only the task weights would move (reweight_tgt_iters={target_iters}), which "
                "does not change what is trained; megagrape cannot express a z-only run",
            )
        if target_iters > 0 and target_iters != train_iters:
            raise refuse(
                "reweight_tgt_iters",
                target_iters,
                f"megagrape runs both GRAPE steps at one mixture.interval, but "
                f"reweight_train_iters={train_iters}; make them equal",
            )
        if target_method == "grape_offline":
            raise refuse(
                "reweight_tgt",
                target_method,
                "its RoI sign up-weights improving tasks; megagrape's roi: measured is the "
                "corrected form: configure it by hand",
            )
        if target_method not in ("grape", "grape_ema", "grape_gap", *NULL_TARGET_METHODS):
            raise refuse("reweight_tgt", target_method, "known: grape, grape_ema, grape_gap")
        moves_z = target_iters > 0
        domain_kind = "log" if target_method in ("grape", "grape_ema") else "plain"
        task_kind = {"grape": "log", "grape_ema": "ema"}.get(target_method, "plain")
        options: dict[str, Any] = {
            "mu_a": float(self.get("mu_train")),
            "eps_a": 0.0,
            "roi": "first_order",
        }
        if moves_z:
            options["mu_z"] = float(self.get("mu_tgt"))
            options["eps_z"] = 0.001
            options["target_gradient"] = task_kind
            if task_kind != domain_kind:
                options["domain_target_gradient"] = domain_kind
            if task_kind == "ema":
                options["loss_ema_decay"] = float(self.get("ema_beta"))
            else:
                self.unused("ema_beta", "read by the reference only for grape_ema")
        else:
            options.update({"mu_z": 0.0, "eps_z": 0.0, "target_gradient": domain_kind})
            self.unused("mu_tgt", "z is fixed (reweight_tgt_iters <= 0)")
            self.unused("ema_beta", "z is fixed (reweight_tgt_iters <= 0)")
        tgt_dw = self.get("tgt_dw")
        if tgt_dw is not None:
            options["initial_task_weights"] = _weights(tgt_dw)
        clip = self.get("max_grad_norm")
        if clip is not None and clip > 0:
            options.update({"gradient_scaling": "clip", "clip_norm": float(clip)})
        else:
            options["gradient_scaling"] = "raw"
        self.put("reweight_train_iters/reweight_tgt_iters", "mixture.method", "grape")
        self.put("reweight_train_iters", "mixture.interval", train_iters)
        self.put("mu_train/mu_tgt/reweight_tgt/tgt_dw/max_grad_norm", "mixture.options", options)
        if weights is not None:
            self.put("train_dw", "mixture.initial", "train_dw.json")

    def outputs(self) -> None:
        strategy = self.reference.get("eval_strategy", self.reference.get("evaluation_strategy"))
        strategy = strategy if strategy is not None else REFERENCE_DEFAULTS["eval_strategy"]
        self.handled.update({"eval_strategy", "evaluation_strategy"})
        if strategy not in ("steps", "no"):
            raise refuse("eval_strategy", strategy, "megagrape evaluates every N steps: use steps")
        every = self.get("eval_steps") or self.get("logging_steps")
        self.put(
            "eval_strategy/eval_steps",
            "targets.eval_interval",
            int(every) if strategy == "steps" else 0,
        )
        save = self.get("save_strategy")
        if save not in ("steps", "no"):
            raise refuse("save_strategy", save, "megagrape checkpoints every N steps: use steps")
        self.put(
            "save_strategy/save_steps",
            "checkpoint.interval",
            int(self.get("save_steps")) if save == "steps" else 0,
        )
        limit = self.get("save_total_limit")
        self.put("save_total_limit", "checkpoint.keep_last", int(limit) if limit else 0)
        overwrite = bool(self.get("overwrite_output_dir"))
        self.put("overwrite_output_dir", "checkpoint.resume", "none" if overwrite else "auto")
        self.put("logging_steps", "logging.interval", int(self.get("logging_steps")))
        if "wandb_proj" in self.reference:
            self.put("wandb_proj", "logging.wandb_project", str(self.get("wandb_proj")))


def convert(reference: dict[str, Any], gpus: int, corpus: str) -> Conversion:
    """The megagrape config for ``reference``; ConfigError naming the first field it refuses."""
    return _Converter(reference, gpus, corpus).run()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("reference", type=Path, help="GRAPE reference JSON config")
    parser.add_argument(
        "--gpus",
        type=int,
        default=1,
        help="GPUs the reference run used (global batch = per-device x accumulation x GPUs)",
    )
    parser.add_argument(
        "--corpus", default="data/reasoning", help="megagrape corpus directory for data.corpus"
    )
    parser.add_argument("--out", type=Path, required=True, help="megagrape YAML to write")
    args = parser.parse_args(argv)
    try:
        reference = json.loads(args.reference.read_text())
        result = convert(reference, args.gpus, args.corpus)
        config = result.config
        if config.get("mixture", {}).get("initial") == "train_dw.json":
            weights_path = args.out.with_name(args.out.stem + "_train_dw.json")
            names = config["data"].get("domains")
            values = _weights(reference["train_dw"])
            weights_path.write_text(json.dumps(dict(zip(names, values)) if names else values))
            config["mixture"]["initial"] = str(weights_path)
        args.out.write_text(yaml.safe_dump(config, sort_keys=False))
        load_config(args.out)  # the result must load as a megagrape config
    except (OSError, json.JSONDecodeError, ConfigError) as err:
        print(f"convert_grape_config: {err}", file=sys.stderr)
        return 2
    print(f"wrote {args.out}")
    for source, target in result.mapped:
        print(f"  {source:<45} -> {target}")
    for key, why in result.ignored:
        print(f"  ignored {key}: {why}")
    for note in result.notes:
        print(f"  note: {note}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
