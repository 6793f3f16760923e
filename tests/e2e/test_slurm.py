"""tools/slurm/pretrain_grape.sbatch on a 2-node allocation with stand-in srun/scontrol/python.

The stand-ins: ``scontrol`` expands the node list and records every other call; ``srun`` prints
its arguments, runs the task command as node 1 and forwards USR1 to it (as srun does); the
``python`` records the arguments it was started with and whether it inherited USR1 ignored,
and, with FAKE_WAIT set, waits for SIGUSR1 with a handler as the trainer does.
"""

import json
import os
import re
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "tools" / "slurm" / "pretrain_grape.sbatch"
OVERRIDES = ["mixture.options={mu_a: 1.5}", "name=a b*", "train.lr=3e-4"]

FAKE_SCONTROL = """#!/bin/bash
if [ "$1 $2" = "show hostnames" ]; then printf "gpu-a17\\ngpu-a18\\n"; exit 0; fi
echo "$*" >> "$FAKE_DIR/scontrol.log"
"""
FAKE_SRUN = """#!/bin/bash
for a in "$@"; do echo "ARG:$a"; done
echo "ENV:MASTER_ADDR=$MASTER_ADDR"
while [ "${1#--}" != "$1" ]; do shift; done
SLURM_NODEID=1 "$@" &
task=$!
trap 'kill -USR1 "$task"' USR1
while kill -0 "$task" 2>/dev/null; do wait "$task" || true; done
wait "$task"
"""
FAKE_PYTHON = """#!{python}
import json, os, signal, sys, time
from pathlib import Path

fake = Path(os.environ["FAKE_DIR"])
status = Path("/proc/self/status").read_text().splitlines()
ignored = int(next(line for line in status if line.startswith("SigIgn:")).split()[1], 16)
record = {{
    "argv": sys.argv[1:],
    "usr1_ignored": bool(ignored >> (signal.SIGUSR1 - 1) & 1),
}}
if os.environ.get("FAKE_WAIT"):
    received = []
    signal.signal(signal.SIGUSR1, lambda *_: received.append(True))
    (fake / "ready").touch()
    deadline = time.monotonic() + 30
    while not received and time.monotonic() < deadline:
        time.sleep(0.05)
    record["stopped"] = bool(received)
(fake / "python.json").write_text(json.dumps(record))
sys.exit(int(os.environ.get("FAKE_EXIT", "0")))
"""


def fake_tools(fake: Path) -> None:
    fake.mkdir()
    tools = {
        "scontrol": FAKE_SCONTROL,
        "srun": FAKE_SRUN,
        "python": FAKE_PYTHON.format(python=sys.executable),
    }
    for name, text in tools.items():
        (fake / name).write_text(text)
        (fake / name).chmod((fake / name).stat().st_mode | stat.S_IEXEC)


def batch_env(fake: Path, launcher: str, extra_env=None) -> dict:
    inherited = {
        k: v for k, v in os.environ.items() if k not in ("MASTER_ADDR", "MASTER_PORT", "DS_CONFIG")
    }
    return {
        **inherited,
        "PATH": f"{fake}:{os.environ['PATH']}",
        "FAKE_DIR": str(fake),
        "MEGAGRAPE_PYTHON": str(fake / "python"),
        "SLURM_NNODES": "2",
        "SLURM_JOB_NODELIST": "gpu-a[17-18]",
        "SLURM_JOB_ID": "4242",
        "SLURM_NODEID": "0",  # the batch host's; each task has its own
        "SLURM_CPUS_PER_TASK": "32",
        "SLURM_SUBMIT_DIR": str(REPO),
        "GPUS_PER_NODE": "8",
        "LAUNCHER": launcher,
        **(extra_env or {}),
    }


COMMAND = ["bash", str(SCRIPT), "configs/quickstart.yaml", *OVERRIDES]


def render(tmp_path: Path, launcher: str, extra_env=None) -> subprocess.CompletedProcess:
    fake_tools(tmp_path / "fake")
    return subprocess.run(
        COMMAND,
        env=batch_env(tmp_path / "fake", launcher, extra_env),
        capture_output=True,
        text=True,
        timeout=60,
    )


def srun_args(result: subprocess.CompletedProcess) -> list[str]:
    return [line[4:] for line in result.stdout.splitlines() if line.startswith("ARG:")]


def python_record(tmp_path: Path) -> dict:
    return json.loads((tmp_path / "fake" / "python.json").read_text())


def scontrol_calls(tmp_path: Path) -> list[str]:
    log = tmp_path / "fake" / "scontrol.log"
    return log.read_text().splitlines() if log.exists() else []


def test_batch_directives_signal_requeue_and_an_output_file_slurm_can_open():
    directives = re.findall(r"^#SBATCH (\S+)", SCRIPT.read_text(), flags=re.MULTILINE)
    assert "--signal=B:USR1@120" in directives
    assert "--requeue" in directives
    output = next(d for d in directives if d.startswith("--output="))
    assert "/" not in output  # the submit directory: no folder that nothing creates


def test_torchrun_launch_for_two_nodes(tmp_path):
    result = render(tmp_path, "torchrun")
    assert result.returncode == 0, result.stderr
    args = srun_args(result)
    assert "--kill-on-bad-exit=1" in args and "--cpus-per-task=32" in args
    argv = python_record(tmp_path)["argv"]
    assert argv[:2] == ["-m", "torch.distributed.run"]
    assert argv[argv.index("--nnodes") + 1] == "2"
    assert argv[argv.index("--nproc_per_node") + 1] == "8"
    assert argv[argv.index("--rdzv_endpoint") + 1] == "gpu-a17:29500"
    assert argv[argv.index("--rdzv_id") + 1] == "4242"
    assert argv[argv.index("tools/pretrain_grape.py") :] == [
        "tools/pretrain_grape.py",
        "--ds_config",
        "configs/ds/zero2.json",
        "--config",
        "configs/quickstart.yaml",
        *OVERRIDES,  # the override with spaces and braces (and a glob) is still one argument
    ]
    assert "ENV:MASTER_ADDR=gpu-a17" in result.stdout
    assert "megagrape: 2 nodes x 8 GPUs, master gpu-a17:29500" in result.stdout
    assert scontrol_calls(tmp_path) == []  # finished without a signal: no requeue


def test_deepspeed_launch_for_two_nodes(tmp_path):
    result = render(
        tmp_path, "deepspeed", {"DS_CONFIG": "configs/ds/zero3.json", "MASTER_PORT": "31000"}
    )
    assert result.returncode == 0, result.stderr
    assert "--cpus-per-task=32" in srun_args(result)
    record = python_record(tmp_path)
    assert record["argv"] == [
        "-m",
        "deepspeed.launcher.runner",
        "--no_ssh",
        "--node_rank",
        "1",  # the task's own SLURM_NODEID, read on the node
        "--num_nodes",
        "2",
        "--num_gpus",
        "8",
        "--master_addr",
        "gpu-a17",
        "--master_port",
        "31000",
        "tools/pretrain_grape.py",
        "--ds_config",
        "configs/ds/zero3.json",
        "--config",
        "configs/quickstart.yaml",
        *OVERRIDES,
    ]


@pytest.mark.parametrize("launcher", ["torchrun", "deepspeed"])
def test_the_launcher_survives_usr1(tmp_path, launcher):
    """Slurm signals every process of the step; the launchers start with USR1 ignored."""
    assert render(tmp_path, launcher).returncode == 0
    assert python_record(tmp_path)["usr1_ignored"]


def run_with_signal(tmp_path: Path, signum: int, extra_env=None) -> subprocess.CompletedProcess:
    """Start the batch script, send it ``signum`` once the step runs, wait for it to end."""
    fake = tmp_path / "fake"
    fake_tools(fake)
    env = batch_env(fake, "torchrun", {"FAKE_WAIT": "1", **(extra_env or {})})
    process = subprocess.Popen(
        COMMAND, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    deadline = time.monotonic() + 30
    while not (fake / "ready").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert (fake / "ready").exists(), "the fake training process did not start"
    process.send_signal(signum)
    stdout, stderr = process.communicate(timeout=60)
    return subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr)


@pytest.mark.parametrize("signum", [signal.SIGUSR1, signal.SIGTERM], ids=["USR1", "TERM"])
def test_a_stop_signal_is_forwarded_then_the_job_requeued(tmp_path, signum):
    result = run_with_signal(tmp_path, signum)
    assert result.returncode == 0, result.stderr
    assert python_record(tmp_path)["stopped"]  # SIGUSR1 reached the training process
    assert f"{signal.Signals(signum).name} received" in result.stdout
    assert scontrol_calls(tmp_path) == ["requeue 4242"]


def test_a_step_that_fails_after_the_signal_is_not_requeued(tmp_path):
    result = run_with_signal(tmp_path, signal.SIGUSR1, {"FAKE_EXIT": "1"})
    assert result.returncode == 1
    assert python_record(tmp_path)["stopped"]
    assert scontrol_calls(tmp_path) == []


@pytest.mark.parametrize(
    ("env", "message"), [({"LAUNCHER": "mpirun"}, "LAUNCHER must be torchrun or deepspeed")]
)
def test_bad_launcher_is_rejected(tmp_path, env, message):
    result = render(tmp_path, env["LAUNCHER"])
    assert result.returncode == 2
    assert message in result.stderr


def test_the_readme_submits_an_existing_config():
    readme = (REPO / "README.md").read_text()
    configs = re.findall(r"tools/slurm/pretrain_grape\.sbatch (\S+)", readme)
    assert configs and all((REPO / config).is_file() for config in configs), configs
