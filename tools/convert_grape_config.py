"""Convert a GRAPE reference-project JSON config into a megagrape run config (YAML).

    python tools/convert_grape_config.py config/climb/grape_mu5.json --gpus 2 --corpus data/reasoning --out configs/mine.yaml

The reference project (Olivia-fsm/GRAPE_data_mixture_with_multi_target) configures a run with
flat JSON fields. This tool maps the ones with a megagrape equivalent, prints the mapping, and
lists the fields it left out (model/tokenizer/wandb settings that megagrape configures
differently). Method semantics follow docs/methods.md: the reference's multiplicative step
sizes ``mu_train``/``mu_tgt`` are GRAPE's ``mu_a``/``mu_z``; its ``doge`` domain step
(log w + mu_train * score, no normalisation or clipping) becomes megagrape's ``doge`` with
``mu = 1 / mu_train``, ``normalize: none`` and ``clip: false``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import yaml

from megagrape.config import load_config
from megagrape.errors import ConfigError

SCHEDULES = {
    "linear_warmup_cosine": "cosine",
    "linear_warmup_exponential": "exponential",
    "linear_warmup_decay": "linear",
    "cosine": "cosine",
    "linear": "linear",
    "constant": "constant",
}


def _names(value: Any) -> list[str]:
    if isinstance(value, str):
        return [v.strip() for v in value.split(",") if v.strip()]
    return [str(v) for v in value or []]


def _weights(value: Any) -> list[float]:
    if isinstance(value, str):
        return [float(v) for v in value.split(",") if v.strip()]
    return [float(v) for v in value]


def convert(
    reference: dict[str, Any], gpus: int, corpus: str
) -> tuple[dict[str, Any], list[tuple[str, str]], list[str]]:
    """Return (megagrape config dict, [(reference field, megagrape field)], [unmapped fields])."""
    used: list[tuple[str, str]] = []
    out: dict[str, Any] = {"data": {"corpus": corpus}, "train": {}, "mixture": {}, "targets": {}}

    def take(field: str, target: str, value: Any) -> None:
        section, _, key = target.partition(".")
        out.setdefault(section, {})[key] = value
        used.append((field, target))

    get = reference.get
    if get("run_name"):
        out["name"] = str(get("run_name"))
        used.append(("run_name", "name"))
    if get("train_domains"):
        take("train_domains", "data.domains", _names(get("train_domains")))
    if get("tgt_domains"):
        take("tgt_domains", "targets.tasks", _names(get("tgt_domains")))
    if get("max_steps") is not None:
        take("max_steps", "train.train_iters", int(get("max_steps")))
    if get("learning_rate") is not None:
        take("learning_rate", "train.lr", float(get("learning_rate")))
    for field in ("lr_end", "min_lr", "end_lr"):
        if get(field) is not None:
            take(field, "train.min_lr", float(get(field)))
    if get("warmup_steps") is not None:
        take("warmup_steps", "train.lr_warmup_iters", int(get("warmup_steps")))
    if get("weight_decay") is not None:
        take("weight_decay", "train.weight_decay", float(get("weight_decay")))
    if get("max_grad_norm") is not None:
        take("max_grad_norm", "train.clip_grad", float(get("max_grad_norm")))
    if get("lr_scheduler_name"):
        name = str(get("lr_scheduler_name"))
        if name not in SCHEDULES:
            raise ConfigError(
                f"lr_scheduler_name={name!r} has no megagrape equivalent; known: {sorted(SCHEDULES)}"
            )
        take("lr_scheduler_name", "train.lr_decay_style", SCHEDULES[name])
    micro = get("per_device_train_batch_size")
    if micro is not None:
        accumulation = int(get("gradient_accumulation_steps") or 1)
        take("per_device_train_batch_size", "train.micro_batch_size", int(micro))
        out["train"]["global_batch_size"] = int(micro) * accumulation * gpus
        used.append(("gradient_accumulation_steps", f"train.global_batch_size (x {gpus} GPUs)"))

    train_method, target_method = str(get("reweight_train") or ""), str(get("reweight_tgt") or "")
    train_iters = int(get("reweight_train_iters") or -1)
    target_iters = int(get("reweight_tgt_iters") or -1)
    weights = _weights(get("train_dw")) if get("train_dw") else None
    if (train_iters < 0 and target_iters < 0) or not train_method:
        options = {"source": "inline", "weights": weights} if weights else {"source": "uniform"}
        out["mixture"] = {"method": "static", "options": options}
        used.append(("reweight_train/train_dw", "mixture.method=static"))
    elif target_method.startswith("grape"):
        options = {"mu_a": float(get("mu_train") or 1.0), "mu_z": float(get("mu_tgt") or 1.0)}
        if target_method == "grape_ema":
            options["target_gradient"] = "ema"
        elif target_method == "grape_gap":
            options["target_gradient"] = "plain"
        out["mixture"] = {
            "method": "grape",
            "interval": max(train_iters, target_iters, 1),
            "options": options,
        }
        used += [
            ("reweight_tgt", "mixture.method=grape"),
            ("mu_train", "mixture.options.mu_a"),
            ("mu_tgt", "mixture.options.mu_z"),
        ]
        used.append(("reweight_train_iters/reweight_tgt_iters", "mixture.interval"))
    else:
        mu_train = float(get("mu_train") or 1.0)
        options = {
            "mu": 1.0 / mu_train,
            "normalize": "none",
            "clip": False,
            "target_gradient": "log",
        }
        out["mixture"] = {"method": "doge", "interval": max(train_iters, 1), "options": options}
        used += [
            ("reweight_train", "mixture.method=doge"),
            ("mu_train", "mixture.options.mu (= 1 / mu_train)"),
        ]
    if weights and out["mixture"]["method"] != "static":
        out["mixture"]["initial"] = "train_dw.json"
        used.append(("train_dw", "mixture.initial (written to train_dw.json next to the output)"))
    mapped = {field.split("/")[0] for field, _ in used} | {
        "gradient_accumulation_steps",
        "reweight_train",
        "reweight_tgt",
        "reweight_train_iters",
        "reweight_tgt_iters",
        "mu_train",
        "mu_tgt",
        "train_dw",
    }
    unmapped = sorted(k for k in reference if k not in mapped)
    out = {key: value for key, value in out.items() if value != {}}
    return out, used, unmapped


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
        config, used, unmapped = convert(reference, args.gpus, args.corpus)
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
    for field, target in used:
        print(f"  {field:<40} -> {target}")
    if unmapped:
        print("not mapped (configure these in megagrape's own way): " + ", ".join(unmapped))
    return 0


if __name__ == "__main__":
    sys.exit(main())
