#!/usr/bin/env bash
# GPU throughput of both benchmark workloads, fp32 and bf16, one process and one process per GPU.
#
#   MovieLens    ml-1m-half, DeepFM reference setup (ids, embed 16, MLP 16-16), batch 1024 a process
#   Criteo-like  ROWS generated rows (benchmarks/criteo_scale.py), DeepFM embed 16, MLP 400-400-400,
#                dropout 0.2, batch 4096 a process, --fm-warmup-epochs 0
#
# Each data set is prepared once (deepfm prepare); every run is `deepfm train --prepared DIR
# --device cuda` (all GPUs: torchrun --nproc-per-node GPUS, NCCL for the dense layers, the
# embedding table synchronised by --embedding-sync auto). Prints training samples/s (all
# processes together, from metrics.json) and test AUC per run.
#
#   bash benchmarks/gpu.sh                                  # defaults below
#   ROWS=200000 EPOCHS=1 bash benchmarks/gpu.sh             # quicker
#   DEVICE=cpu GPUS=2 PRECISIONS=fp32 ROWS=20000 bash benchmarks/gpu.sh   # a dry run without a GPU
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
DATA=${DATA:-../shared/data/ml-1m-half}
ROWS=${ROWS:-1000000}
EPOCHS=${EPOCHS:-2}
DEVICE=${DEVICE:-cuda}
PRECISIONS=${PRECISIONS:-"fp32 bf16"}
GPUS=${GPUS:-$(python -c "import torch; print(torch.cuda.device_count())")}
WORK=${WORK:-$(mktemp -d /tmp/deepfm-gpu-XXXX)}
mkdir -p "$WORK/runs"
echo "work folder $WORK; device $DEVICE; $GPUS process(es) for the multi-GPU runs"
python - <<'EOF'
import platform, torch
print(f"torch {torch.__version__}, python {platform.python_version()}")
for i in range(torch.cuda.device_count()):
    print(f"GPU {i}: {torch.cuda.get_device_name(i)}")
EOF

if [ ! -d "$WORK/ml" ]; then
  python -m deepfm prepare --data-dir "$DATA" --out "$WORK/ml" --no-progress
fi
if [ ! -d "$WORK/criteo" ]; then
  python - "$WORK" "$ROWS" <<'EOF'
import sys, yaml
from pathlib import Path
sys.path.insert(0, "benchmarks")
import criteo_scale
from deepfm.data.catalog.ctr import criteo_spec_dict
work, rows = Path(sys.argv[1]), int(sys.argv[2])
criteo_scale.generate(work / "criteo.txt", rows, seed=0, zipf=1.2)
spec = criteo_spec_dict([str(work / "criteo.txt")]) | {"name": f"criteo-like-{rows}"}
(work / "criteo.yaml").write_text(yaml.safe_dump(spec, sort_keys=False))
EOF
  python -m deepfm prepare --spec "$WORK/criteo.yaml" --out "$WORK/criteo" --no-progress
fi

ML=(--prepared "$WORK/ml" --batch-size 1024)
CRITEO=(--prepared "$WORK/criteo" --mlp 400,400,400 --dropout 0.2 --batch-size 4096 --fm-warmup-epochs 0)
rows=()
run() {  # name, processes, precision, workload options...
  local name=$1 procs=$2 precision=$3
  shift 3
  local out="$WORK/runs/$name"
  local args=(train "$@" --device "$DEVICE" --precision "$precision" --epochs "$EPOCHS" --no-progress --out "$out")
  if [ "$procs" = 1 ]; then
    python -m deepfm "${args[@]}" > "$out.log" 2>&1
  else
    python -m torch.distributed.run --standalone --nproc-per-node "$procs" -m deepfm "${args[@]}" > "$out.log" 2>&1
  fi
  rows+=("$(python - "$out/metrics.json" "$name" "$procs" "$precision" <<'EOF'
import json, sys
m = json.load(open(sys.argv[1]))
d = m["distributed"]
sync = d.get("embedding_sync") or "-"
mb = d.get("bytes_per_step", {}).get("total")
print(f"| {sys.argv[2]} | {sys.argv[3]} | {sys.argv[4]} | {m['environment']['optimizer']} | {sync} | "
      f"{'-' if mb is None else f'{mb / 1e6:.2f}'} | {m['train_samples_per_s']:,.0f} | {m['test_auc']:.4f} |")
EOF
)")
  echo "${rows[-1]}"
}

for precision in $PRECISIONS; do
  for procs in 1 "$GPUS"; do
    run "movielens-$precision-x$procs" "$procs" "$precision" "${ML[@]}"
    run "criteo-$precision-x$procs" "$procs" "$precision" "${CRITEO[@]}"
  done
done
echo
echo "| run | processes | precision | optimizer | embedding sync | MB/step/process | train samples/s (all) | test AUC |"
echo "|---|---:|---|---|---|---:|---:|---:|"
printf '%s\n' "${rows[@]}"
