"""Pretrain a Megatron-core GPT on DeepSpeed with an online data mixture.

    deepspeed tools/pretrain_grape.py --ds_config configs/ds/zero2.json --config configs/quickstart.yaml [key=value ...]
    torchrun --nproc_per_node 2 tools/pretrain_grape.py --ds_config ... --config ...
    python tools/pretrain_grape.py --ds_config ... --config ...          (one process)

Overrides are dotted run-config fields, e.g. ``train.lr=3e-4 mixture.method=doge``.
The config is validated before any process group starts; a bad field exits with code 2.
"""

from __future__ import annotations

import argparse
import os
import sys

from megagrape.errors import ConfigError, DataError


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--config", required=True, help="run config (YAML or JSON)")
    parser.add_argument(
        "--ds_config",
        "--deepspeed_config",
        dest="ds_config",
        required=True,
        help="DeepSpeed config JSON",
    )
    parser.add_argument(
        "--local_rank", type=int, default=None, help="set by the deepspeed launcher"
    )
    parser.add_argument("overrides", nargs="*", help="run-config overrides: section.field=value")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    if args.local_rank is not None:
        os.environ.setdefault("LOCAL_RANK", str(args.local_rank))
    from megagrape.config import load_config
    from megagrape.ds_config import read_ds_config

    try:
        cfg = load_config(args.config, args.overrides)
        world_size = int(os.environ.get("WORLD_SIZE", os.environ.get("SLURM_NTASKS", "1")))
        cfg.validate(world_size)
        ds_raw = read_ds_config(args.ds_config)
    except (ConfigError, DataError) as err:
        print(f"megagrape: configuration error: {err}", file=sys.stderr)
        return 2

    from megagrape.train import run_training

    try:
        run_training(cfg, ds_raw, ds_source=args.ds_config)
    except (ConfigError, DataError) as err:
        rank = os.environ.get("RANK", "0")
        print(f"megagrape: rank {rank}: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
