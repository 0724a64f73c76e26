#!/usr/bin/env bash
# The CUDA checks and benchmarks, in one command (make gpu-check): about 8 minutes on one GPU.
# Writes benchmarks/results/gpu/benchmark.{json,md}.
set -euo pipefail
PY=${1:-python}
OUT=benchmarks/results/gpu
if ! "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
    echo "gpu-check: no CUDA device here (torch.cuda.is_available() is False)." >&2
    exit 2
fi
# The compiled (Triton) loss against eager and torchvision on CUDA, AMP training, one-GPU NCCL
# train_net.py with --eval-only.
"$PY" -m pytest -q -p no:cacheprovider tests/test_cuda.py
"$PY" -m pytest -q -p no:cacheprovider tests/layers -k cuda
# R-50-FPN at 800 px against Detectron2's and torchvision's RetinaNet in one interleaved run: the
# training step at batch 8 (fp32 and AMP), inference at batch 1 and 8, the losses, the paper's
# Table 1e on this GPU, and MODEL.RETINANET_FL.COMPILE against eager (compiles, overhead, break-even).
"$PY" tools/benchmark.py --device cuda --parts losses train inference table1e compile \
    --image-sizes 800 --train-batch-size 8 --batch-sizes 1 8 --precisions fp32 amp \
    --compile-calls 8 --output-dir "$OUT"
echo "gpu-check: all CUDA checks passed; reports in $OUT/"
