"""safe_torch_load and the safe checkpoint engine on real checkpoints of megagrape's engines.

The engines are megagrape's own train modules (AdamW, the lr schedule, the DeepSpeed configs in
configs/ds/), stepped once and saved with ``engine.save_checkpoint``: ZeRO 0-3 in this process,
PP = 2 in 2 gloo processes. Every file loads with safe_torch_load and equals the unsafe load; an
engine with the safe checkpoint engine resumes exactly and refuses a tampered file.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
import torch

from megagrape.errors import DataError
from megagrape.utils.safe_load import safe_torch_load
from tests.dist_utils import run_distributed
from tests.run_utils import one_process_group, tiny_config

TAG = "step_000001"


class RunsCommand:
    """Unpickling this object runs ``command`` in a shell (what a hostile checkpoint does)."""

    def __init__(self, command: str) -> None:
        self.command = command

    def __reduce__(self):
        return os.system, (self.command,)


@pytest.fixture(scope="module")
def env():
    with one_process_group(seed=0) as dist_env:
        yield dist_env


def build_module(out: Path, env, zero_stage: int, *overrides: str):
    """megagrape's train module for the tiny model: one micro-batch of 2 per optimizer step."""
    from megagrape.ds_config import read_ds_config, resolve_ds_config
    from megagrape.train.train_module import build_train_module

    cfg = tiny_config(
        out, out, "safe", "train.global_batch_size=2", "train.micro_batch_size=2", *overrides
    )
    ds = resolve_ds_config(
        read_ds_config(f"configs/ds/zero{zero_stage}.json"),
        cfg,
        env.world_size,
        env.device,
        pipeline=cfg.parallel.pipeline_parallel > 1,
    )
    return build_train_module(cfg, env, ds)


def train_step(module, seed: int) -> None:
    """One optimizer step on a random batch (the same batch for the same seed)."""
    from megagrape.model import masked_mean, token_losses
    from megagrape.model.pipeline import pipeline_batch

    seq = module.cfg.model.seq_length
    sample = torch.randint(
        0, module.cfg.model.vocab_size, (2, seq + 1), generator=torch.Generator().manual_seed(seed)
    )
    batch = dict(
        tokens=sample[:, :-1],
        labels=sample[:, 1:],
        position_ids=torch.arange(seq).expand(2, -1),
        loss_mask=torch.ones(2, seq),
    )
    engine = module.engine
    if module.pipeline_shape is not None:
        engine.train_batch(data_iter=iter([pipeline_batch(batch)]))
        return
    engine.backward(masked_mean(token_losses(engine, batch), batch["loss_mask"]))
    engine.step()


def parameters(module) -> dict[str, torch.Tensor]:
    """This rank's full-precision parameters by name (ZeRO-3 partitions gathered)."""
    import deepspeed

    params = list(module.engine.module.named_parameters())
    with deepspeed.zero.GatheredParameters([p for _, p in params]):
        return {name: p.detach().clone() for name, p in params}


def assert_same(safe, unsafe, where: str = "") -> None:
    """Equal structure, tensors (values and dtypes) and values; objects by class and state."""
    assert type(safe) is type(unsafe), where
    if torch.is_tensor(safe):
        assert safe.dtype == unsafe.dtype and torch.equal(safe, unsafe), where
    elif isinstance(safe, dict):
        assert list(safe) == list(unsafe), where
        for key in safe:
            assert_same(safe[key], unsafe[key], f"{where}.{key}")
    elif isinstance(safe, list | tuple):
        assert len(safe) == len(unsafe), where
        for index, (a, b) in enumerate(zip(safe, unsafe)):
            assert_same(a, b, f"{where}[{index}]")
    elif hasattr(safe, "__dict__") and not isinstance(safe, type):
        assert_same(vars(safe), vars(unsafe), where)
    else:
        assert safe == unsafe, where


def check_every_file_loads_the_same(checkpoint: Path) -> list[str]:
    """safe_torch_load == torch.load(weights_only=False) for every .pt; the file names."""
    names = sorted(p.name for p in checkpoint.glob("*.pt"))
    for name in names:
        safe = safe_torch_load(checkpoint / name)
        assert_same(safe, torch.load(checkpoint / name, map_location="cpu", weights_only=False))
    return names


def tamper(path: Path, marker: Path) -> None:
    """Replace ``path`` with a file whose unpickling would create ``marker``."""
    torch.save({"module": RunsCommand(f"touch {marker}")}, path)


@pytest.mark.parametrize("zero_stage", [0, 1, 2, 3])
def test_real_zero_checkpoints_load_safely_and_equal_the_unsafe_load(env, tmp_path, zero_stage):
    from deepspeed.runtime.fp16.loss_scaler import LossScaler

    module = build_module(tmp_path, env, zero_stage)
    train_step(module, seed=1)
    module.engine.save_checkpoint(str(tmp_path), tag=TAG)

    names = check_every_file_loads_the_same(tmp_path / TAG)
    optimizer_files = [name for name in names if name.endswith("optim_states.pt")]
    assert bool(optimizer_files) == (zero_stage > 0)
    for name in optimizer_files:  # the allow-listed classes were really in the files
        saved = safe_torch_load(tmp_path / TAG / name)["optimizer_state_dict"]
        assert type(saved["loss_scaler"]) is LossScaler


def test_safe_engine_resumes_exactly_and_refuses_a_tampered_checkpoint(env, tmp_path):
    from megagrape.utils.safe_checkpoint_engine import install_safe_checkpoint_engine

    trained = build_module(tmp_path / "a", env, 1)
    train_step(trained, seed=1)
    trained.engine.save_checkpoint(str(tmp_path / "ckpt"), tag=TAG)
    resumed = build_module(tmp_path / "b", env, 1)
    install_safe_checkpoint_engine(resumed.engine)
    before = parameters(resumed)
    assert any(not torch.equal(before[n], t) for n, t in parameters(trained).items())

    load_path, _ = resumed.engine.load_checkpoint(str(tmp_path / "ckpt"), tag=TAG)
    assert load_path is not None
    assert all(torch.equal(parameters(resumed)[n], t) for n, t in parameters(trained).items())
    train_step(trained, seed=2)
    train_step(resumed, seed=2)  # equal after a step too: the AdamW moments were restored
    assert all(torch.equal(parameters(resumed)[n], t) for n, t in parameters(trained).items())

    checkpoint = tmp_path / "ckpt" / TAG
    marker = tmp_path / "pwned"
    for name in ("mp_rank_00_model_states.pt", "zero_pp_rank_0_mp_rank_00_optim_states.pt"):
        shutil.copyfile(checkpoint / name, tmp_path / "good.pt")
        tamper(checkpoint / name, marker)
        with pytest.raises(DataError, match=rf"{name}: holds objects outside"):
            resumed.engine.load_checkpoint(str(tmp_path / "ckpt"), tag=TAG)
        assert not marker.exists()
        shutil.copyfile(tmp_path / "good.pt", checkpoint / name)


def _pipeline_worker(rank: int, world_size: int, out: str) -> dict:
    import torch.distributed as dist

    from megagrape import parallel
    from megagrape.utils.safe_checkpoint_engine import install_safe_checkpoint_engine

    out = Path(out)
    cfg = tiny_config(out, out, "pp", "parallel.pipeline_parallel=2")
    env = parallel.init_distributed(cfg.parallel, cfg.seed)
    trained = build_module(out / "a", env, 1, "parallel.pipeline_parallel=2")
    train_step(trained, seed=1)
    trained.engine.save_checkpoint(str(out / "ckpt"), tag=TAG)
    resumed = build_module(out / "b", env, 1, "parallel.pipeline_parallel=2")
    install_safe_checkpoint_engine(resumed.engine)
    differed = any(
        not torch.equal(parameters(resumed)[n], t) for n, t in parameters(trained).items()
    )
    load_path, _ = resumed.engine.load_checkpoint(str(out / "ckpt"), tag=TAG)
    equal = all(torch.equal(parameters(resumed)[n], t) for n, t in parameters(trained).items())
    dist.barrier()
    if rank == 0:  # the first and the last layer file: one on each stage
        layers = sorted((out / "ckpt" / TAG).glob("layer_*-model_states.pt"))
        for path in (layers[0], layers[-1]):
            shutil.copyfile(path, out / f"good_{path.name}")
            tamper(path, out / "pwned")
    dist.barrier()
    try:
        resumed.engine.load_checkpoint(str(out / "ckpt"), tag=TAG)
        refused = ""
    except DataError as exc:
        refused = str(exc)
    dist.barrier()
    if rank == 0:
        for good in out.glob("good_*"):
            shutil.move(good, out / "ckpt" / TAG / good.name.removeprefix("good_"))
    parallel.destroy_distributed()
    return {
        "differed": differed,
        "loaded": load_path is not None,
        "equal": equal,
        "refused": refused,
    }


def test_pipeline_checkpoint_loads_safely_resumes_and_refuses_tampered_layers(tmp_path):
    results = run_distributed(_pipeline_worker, world_size=2, args=(str(tmp_path),))
    for result in results:
        assert result["differed"] and result["loaded"] and result["equal"], result
        assert "layer_" in result["refused"] and "holds objects outside" in result["refused"]
    assert not (tmp_path / "pwned").exists()

    names = check_every_file_loads_the_same(tmp_path / "ckpt" / TAG)
    assert "layer_00-model_00-model_states.pt" in names
    assert "zero_pp_rank_0_mp_rank_01_optim_states.pt" in names
