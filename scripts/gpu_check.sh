#!/usr/bin/env bash
# The CUDA checks and benchmarks, in one command (make gpu-check): about 8 minutes on one GPU.
# Writes benchmarks/results/gpu/{train,inference,table1e,compile}.{json,md}.
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
# R-50-FPN at 800 px against Detectron2's RetinaNet in the same run: train batch 8 with AMP
# (and fp32), inference batch 1 and 8; then the paper's Table 1e on this GPU.
"$PY" -m retinanet_fl.benchmark train --device cuda --image-sizes 800 --batch-size 8 --output-dir "$OUT"
"$PY" -m retinanet_fl.benchmark inference --device cuda --image-sizes 800 --batch-sizes 1 8 --output-dir "$OUT"
"$PY" -m retinanet_fl.benchmark table1e --device cuda --output-dir "$OUT"
# MODEL.RETINANET_FL.COMPILE against eager over COCO-like sizes, inference and training: compiles,
# overhead, break-even.
"$PY" -m retinanet_fl.benchmark compile --device cuda --num-calls 8 --output-dir "$OUT"
echo "gpu-check: all CUDA checks passed; reports in $OUT/"
