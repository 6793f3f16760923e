"""Render tools/slurm/pretrain_grape.sbatch for a 2-node allocation with stand-in srun/scontrol."""

import os
import stat
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "tools" / "slurm" / "pretrain_grape.sbatch"


def fake_tools(bin_dir: Path) -> None:
    """scontrol expands the node list; srun prints each argument on its own line."""
    bin_dir.mkdir()
    scontrol = bin_dir / "scontrol"
    scontrol.write_text(
        '#!/bin/bash\n[ "$1 $2" = "show hostnames" ] && printf "gpu-a17\\ngpu-a18\\n"\n'
    )
    srun = bin_dir / "srun"
    srun.write_text(
        '#!/bin/bash\nfor a in "$@"; do echo "ARG:$a"; done\necho "ENV:MASTER_ADDR=$MASTER_ADDR"\n'
    )
    for tool in (scontrol, srun):
        tool.chmod(tool.stat().st_mode | stat.S_IEXEC)


def render(tmp_path: Path, launcher: str, extra_env=None) -> subprocess.CompletedProcess:
    fake_tools(tmp_path / "bin")
    inherited = {
        k: v for k, v in os.environ.items() if k not in ("MASTER_ADDR", "MASTER_PORT", "DS_CONFIG")
    }
    env = {
        **inherited,
        "PATH": f"{tmp_path / 'bin'}:{os.environ['PATH']}",
        "SLURM_NNODES": "2",
        "SLURM_JOB_NODELIST": "gpu-a[17-18]",
        "SLURM_JOB_ID": "4242",
        "SLURM_SUBMIT_DIR": str(REPO),
        "GPUS_PER_NODE": "8",
        "LAUNCHER": launcher,
        **(extra_env or {}),
    }
    return subprocess.run(
        ["bash", str(SCRIPT), "configs/quickstart.yaml", "train.lr=3e-4"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_torchrun_launch_for_two_nodes(tmp_path):
    result = render(tmp_path, "torchrun")
    assert result.returncode == 0, result.stderr
    args = [line[4:] for line in result.stdout.splitlines() if line.startswith("ARG:")]
    assert "--kill-on-bad-exit=1" in args
    assert args[args.index("--nnodes") + 1] == "2"
    assert args[args.index("--nproc_per_node") + 1] == "8"
    assert args[args.index("--rdzv_endpoint") + 1] == "gpu-a17:29500"
    assert args[args.index("--rdzv_id") + 1] == "4242"
    assert args[args.index("--config") + 1] == "configs/quickstart.yaml"
    assert args[args.index("--ds_config") + 1] == "configs/ds/zero2.json"
    assert args[-1] == "train.lr=3e-4"
    assert "ENV:MASTER_ADDR=gpu-a17" in result.stdout
    assert "megagrape: 2 nodes x 8 GPUs, master gpu-a17:29500" in result.stdout


def test_deepspeed_launch_for_two_nodes(tmp_path):
    result = render(
        tmp_path, "deepspeed", {"DS_CONFIG": "configs/ds/zero3.json", "MASTER_PORT": "31000"}
    )
    assert result.returncode == 0, result.stderr
    command = [line[4:] for line in result.stdout.splitlines() if line.startswith("ARG:")][-1]
    assert "deepspeed.launcher.runner --no_ssh" in command
    assert "--num_nodes 2 --num_gpus 8 --node_rank $SLURM_NODEID" in command
    assert "--master_addr gpu-a17 --master_port 31000" in command
    assert (
        "--ds_config configs/ds/zero3.json --config configs/quickstart.yaml train.lr=3e-4"
        in command
    )


@pytest.mark.parametrize(
    ("env", "message"), [({"LAUNCHER": "mpirun"}, "LAUNCHER must be torchrun or deepspeed")]
)
def test_bad_launcher_is_rejected(tmp_path, env, message):
    result = render(tmp_path, env["LAUNCHER"])
    assert result.returncode == 2
    assert message in result.stderr
