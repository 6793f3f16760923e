"""Pretrain a Megatron-core GPT on DeepSpeed with an online data mixture.

    deepspeed tools/pretrain_grape.py --ds_config configs/ds/zero2.json --config configs/quickstart.yaml [key=value ...]
    torchrun --nproc_per_node 2 tools/pretrain_grape.py --ds_config ... --config ...
    python tools/pretrain_grape.py --ds_config ... --config ...          (one process)
    python tools/pretrain_grape.py --ds_config ... --config ... --dry-run   (check, start nothing)
    python tools/pretrain_grape.py --list-methods grape | --print-config | --help

The command line lives in megagrape/train/launch.py; everything is checked before any
process group starts and a bad field exits with code 2.
"""

from __future__ import annotations

import sys

from megagrape.train.launch import main

if __name__ == "__main__":
    sys.exit(main())
