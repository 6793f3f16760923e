"""The command line of tools/pretrain_grape.py: parse, check everything, then train (or only show).

    pretrain_grape.py --ds_config configs/ds/zero2.json --config configs/run.yaml [overrides]
    pretrain_grape.py ... --dry-run [--world-size 64]   check config, DeepSpeed config and data
    pretrain_grape.py --config configs/run.yaml --print-config       the resolved YAML
    pretrain_grape.py --list-methods [NAME]            methods, their needs, options, defaults
    pretrain_grape.py --help                           every field with its docstring

Overrides come in two spellings, applied in this order after the YAML file:
``section.field=value`` (values parse as YAML: ``mixture.options={mu_a: 1.5}``,
``data.domains=[web,code]``) and ``--section.field VALUE`` flags (tyro, typed from the
dataclasses, the way torchtitan's job config reads). Exit codes: 0 done or stopped cleanly (a
stop signal, train.exit_interval, train.exit_duration_minutes: relaunch to resume), 2 bad input
(before any process group for everything ``preflight`` checks), 3 training diverged (the last
good checkpoint is kept), 1 any other failure.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import textwrap

from megagrape.errors import ConfigError, DataError, TrainingDiverged

USAGE = (
    "pretrain_grape.py [--config RUN.yaml] [--ds_config DS.json] "
    "[--dry-run [--world-size N] | --print-config | --list-methods [NAME] | --help] "
    "[section.field=value ...] [--section.field VALUE ...]"
)


def _own_arguments() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="pretrain_grape.py", usage=USAGE, add_help=False)
    parser.add_argument("--config", default=None, help="run config (YAML or JSON)")
    parser.add_argument(
        "--ds_config", "--deepspeed_config", dest="ds_config", default=None, help="DeepSpeed JSON"
    )
    parser.add_argument(
        "--local_rank", type=int, default=None, help="set by the deepspeed launcher"
    )
    parser.add_argument("-h", "--help", action="store_true", help="show every config field")
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--dry-run", action="store_true", help="check everything, start nothing")
    mode.add_argument("--print-config", action="store_true", help="print the resolved config")
    mode.add_argument(
        "--list-methods", nargs="?", const="", default=None, metavar="NAME", help="methods"
    )
    parser.add_argument(
        "--world-size", type=int, default=None, help="with --dry-run: the launch's world size"
    )
    return parser


_OVERRIDE = re.compile(r"^[A-Za-z_]\w*(\.\w+)*=")


def split_overrides(rest: list[str]) -> tuple[list[str], list[str]]:
    """Split the unparsed arguments into ``key=value`` overrides and ``--flag [VALUE]`` tokens.

    A token ``section.field=value`` is always an override; other tokens after a flag are its
    values (several for list fields).
    """
    overrides, flags = [], []
    in_flag = False
    for token in rest:
        if _OVERRIDE.match(token):
            overrides.append(token)
            in_flag = False
        elif token.startswith("--"):
            flags.append(token)
            in_flag = "=" not in token
        elif in_flag:
            flags.append(token)
        else:
            raise ConfigError(
                f"argument {token!r} is neither section.field=value nor a --section.field flag"
            )
    return overrides, flags


def build_config(config_path: str | None, overrides: list[str], flags: list[str]):
    """YAML file, then ``key=value`` overrides, then tyro flags; returns a RunConfig."""
    from megagrape.config import RunConfig, load_config

    cfg = load_config(config_path, overrides)
    if not flags:
        return cfg
    import tyro

    return tyro.cli(
        RunConfig,
        default=cfg,
        args=flags,
        prog="pretrain_grape.py",
        use_underscores=True,
    )


def field_help() -> str:
    """tyro's listing of every RunConfig field, its type, default and docstring."""
    import contextlib
    import io

    import tyro

    from megagrape.config import RunConfig

    stream = io.StringIO()
    with contextlib.redirect_stdout(stream), contextlib.suppress(SystemExit):
        tyro.cli(
            RunConfig,
            args=["--help"],
            prog="pretrain_grape.py",
            use_underscores=True,
        )
    return stream.getvalue()


def _print_help(parser: argparse.ArgumentParser) -> None:
    print(f"usage: {USAGE}\n")
    print(textwrap.dedent(__doc__ or "").strip() + "\n")
    print(parser.format_help().split("\n", 2)[-1])
    print("Run-config fields (mixture.options: see --list-methods NAME):")
    print(field_help())


def _world_size(requested: int | None) -> int:
    if requested is not None:
        if requested < 1:
            raise ConfigError(f"--world-size={requested} must be >= 1")
        return requested
    return int(os.environ.get("WORLD_SIZE", os.environ.get("SLURM_NTASKS", "1")))


def _require(value: str | None, flag: str, what: str) -> str:
    if not value:
        raise ConfigError(f"{flag} is required {what}; e.g. {flag} configs/ds/zero2.json")
    return value


def main(argv: list[str] | None = None) -> int:
    """The whole command; returns the exit code."""
    parser = _own_arguments()
    args, rest = parser.parse_known_args(sys.argv[1:] if argv is None else argv)
    if args.help:
        _print_help(parser)
        return 0
    if args.local_rank is not None:
        os.environ.setdefault("LOCAL_RANK", str(args.local_rank))
    try:
        if args.list_methods is not None:
            from megagrape.mixture.catalog import describe_method, describe_methods

            print(describe_method(args.list_methods) if args.list_methods else describe_methods())
            return 0
        overrides, flags = split_overrides(rest)
        cfg = build_config(args.config, overrides, flags)
        if args.print_config:
            from megagrape.config import config_yaml

            cfg.validate()
            print(config_yaml(cfg), end="")
            return 0
        from megagrape.ds_config import read_ds_config
        from megagrape.train.preflight import preflight

        ds_path = _require(args.ds_config, "--ds_config", "to check or start a run")
        _require(args.config, "--config", "to check or start a run")
        ds_raw = read_ds_config(ds_path)
        plan = preflight(cfg, ds_raw, _world_size(args.world_size), ds_source=ds_path)
    except (ConfigError, DataError) as err:
        print(f"megagrape: configuration error: {err}", file=sys.stderr)
        return 2
    if args.dry_run:
        print(plan.describe())
        print("dry run: configuration, DeepSpeed config and data are valid; nothing was started")
        return 0
    from megagrape.train import run_training

    rank = os.environ.get("RANK", "0")
    try:
        run_training(cfg, ds_raw, ds_source=ds_path)
    except (ConfigError, DataError) as err:
        print(f"megagrape: rank {rank}: {err}", file=sys.stderr)
        return 2
    except TrainingDiverged as err:
        print(f"megagrape: rank {rank}: {err}", file=sys.stderr)
        return 3
    return 0
