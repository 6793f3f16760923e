"""tools/convert_grape_config.py maps GRAPE reference-project JSON configs onto megagrape configs."""

import importlib.util
import json
from pathlib import Path

from megagrape.config import load_config

REPO = Path(__file__).resolve().parents[2]
_spec = importlib.util.spec_from_file_location(
    "convert_grape_config", REPO / "tools" / "convert_grape_config.py"
)
tool = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(tool)

# Fields of the reference's config/climb/grape_mu5.json (research/algorithms.md §1).
GRAPE_MU5 = {
    "dataset": "climb-logiqa-piqa-arc_easy-arc_challenge-hellaswag-sciq",
    "train_domains": "cluster_1,cluster_2,cluster_3",
    "tgt_domains": "logiqa,piqa,arc_easy,arc_challenge,hellaswag,sciq",
    "reweight_train": "doge",
    "reweight_tgt": "grape",
    "mu_train": 1.5,
    "mu_tgt": 5.0,
    "reweight_train_iters": 100,
    "reweight_tgt_iters": 100,
    "learning_rate": 1.5e-4,
    "max_steps": 50000,
    "warmup_steps": 2000,
    "weight_decay": 0.01,
    "max_grad_norm": 1.0,
    "lr_scheduler_name": "linear_warmup_cosine",
    "per_device_train_batch_size": 16,
    "gradient_accumulation_steps": 2,
    "wandb_proj": "climb",
}


class Result:
    def __init__(self, returncode, stdout, stderr):
        self.returncode, self.stdout, self.stderr = returncode, stdout, stderr


def convert(tmp_path, reference, *args, capsys=None):
    src = tmp_path / "ref.json"
    src.write_text(json.dumps(reference))
    out = tmp_path / "out.yaml"
    code = tool.main([str(src), "--out", str(out), *args])
    captured = capsys.readouterr() if capsys else None
    return Result(code, captured.out if captured else "", captured.err if captured else ""), out


def test_grape_mu5_maps_to_grape(tmp_path, capsys):
    result, out = convert(tmp_path, GRAPE_MU5, "--gpus", "2", capsys=capsys)
    assert result.returncode == 0, result.stderr
    cfg = load_config(out)
    assert cfg.mixture.method == "grape"
    assert cfg.mixture.options == {"mu_a": 1.5, "mu_z": 5.0}
    assert cfg.mixture.interval == 100
    assert (cfg.train.train_iters, cfg.train.lr, cfg.train.lr_warmup_iters) == (50000, 1.5e-4, 2000)
    assert (cfg.train.micro_batch_size, cfg.train.global_batch_size) == (16, 64)
    assert cfg.train.lr_decay_style == "cosine"
    assert cfg.data.domains == ["cluster_1", "cluster_2", "cluster_3"]
    assert cfg.targets.tasks == ["logiqa", "piqa", "arc_easy", "arc_challenge", "hellaswag", "sciq"]
    assert (
        "not mapped" in result.stdout
        and "wandb_proj" in result.stdout
        and "dataset" in result.stdout
    )


def test_doge_base_and_static_mixtures(tmp_path):
    doge = {**GRAPE_MU5, "reweight_tgt": ""}
    result, out = convert(tmp_path, doge)
    assert result.returncode == 0, result.stderr
    options = load_config(out).mixture.options
    assert options["mu"] == 1 / 1.5 and options["normalize"] == "none" and options["clip"] is False

    base = {
        **GRAPE_MU5,
        "reweight_train_iters": -1,
        "reweight_tgt_iters": -1,
        "train_dw": "0.5,0.3,0.2",
    }
    result, out = convert(tmp_path, base)
    assert result.returncode == 0, result.stderr
    cfg = load_config(out)
    assert cfg.mixture.method == "static"
    assert cfg.mixture.options == {"source": "inline", "weights": [0.5, 0.3, 0.2]}

    climb_grape = {**GRAPE_MU5, "train_dw": "0.5,0.3,0.2"}
    result, out = convert(tmp_path, climb_grape)
    assert result.returncode == 0, result.stderr
    initial = Path(load_config(out).mixture.initial)
    assert json.loads(initial.read_text()) == {"cluster_1": 0.5, "cluster_2": 0.3, "cluster_3": 0.2}


def test_unknown_scheduler_is_rejected(tmp_path, capsys):
    result, _ = convert(tmp_path, {**GRAPE_MU5, "lr_scheduler_name": "polynomial"}, capsys=capsys)
    assert result.returncode == 2
    assert "lr_scheduler_name='polynomial'" in result.stderr
