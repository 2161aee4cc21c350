#!/usr/bin/env bash
# Everything one GPU session measures, in one command, results under $OUT (or ./gpu-results).
# Usage on the GPU host:  source .whl/env.sh && bash benchmarks/gpu.sh tests train inference kernels
# (distributed: two GPUs, okto-trainer on one against okto-ddp and okto-fsdp on two)
# Each stage has its own time limit so one slow stage cannot eat the others.
set -uo pipefail
out=${OUT:-gpu-results}
mkdir -p "$out"
export PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader | tee "$out/device.txt"
python -c "import torch, triton, transformers; print('torch', torch.__version__, 'triton', triton.__version__, 'transformers', transformers.__version__)" | tee -a "$out/device.txt"
for stage in "$@"; do
  echo "== $stage"
  case "$stage" in
    tests) timeout 360 python -m pytest -m gpu -n 8 -q -p no:cacheprovider tests 2>&1 | tee "$out/gpu-tests.log" | tail -25 ;;
    train) timeout 560 python benchmarks/train.py --only hf-eager hf-compile okto-native okto-trainer okto-attention-loss-compile okto-kernels-compile --steps 20 --timeout 200 --out "$out/train.jsonl" --markdown "$out/train.md" 2>&1 | tail -20 ;;
    inference) timeout 250 python benchmarks/inference.py --out "$out/inference.json" --markdown "$out/inference.md" 2>&1 | tail -60 ;;
    kernels) timeout 420 python benchmarks/run.py --out "$out/kernels.jsonl" --markdown "$out/kernels.md" 2>&1 | tail -70 ;;
    distributed) timeout 380 python benchmarks/train.py --only okto-trainer okto-ddp okto-fsdp --gpus 2 --steps 60 --timeout 150 --out "$out/distributed.jsonl" --markdown "$out/distributed.md" 2>&1 | tail -20
      timeout 170 python -m pytest -m gpu -q -p no:cacheprovider tests/training/test_distributed.py 2>&1 | tee "$out/distributed-tests.log" | tail -5 ;;
    *) echo "unknown stage $stage" ;;
  esac
done
