#!/usr/bin/env bash
# AP on synthetic_val of one checkpoint (default: the demo's) without and with test-time
# augmentation, each evaluated by `python -m retinanet_fl.train_net --eval-only` in this one run;
# prints and writes OUT/tta.md. Run from the repository root (the synthetic dataset is under
# ./datasets, as the demo made it).
#   bash scripts/measure_tta.sh [PYTHON] [WEIGHTS] [OUT]
set -euo pipefail
set -f  # the overrides hold parentheses; nothing here is a glob
PY=${1:-.venv/bin/python}
WEIGHTS=${2:-output/demo/model_final.pth}
OUT=${3:-output/tta}
CONFIG=configs/synthetic/retinanet_R18_FPN_synthetic.yaml
if [ ! -f "$CONFIG" ]; then
    echo "measure_tta: $CONFIG not found: run this from the repository root." >&2
    exit 2
fi
if [ ! -f "$WEIGHTS" ]; then
    echo "measure_tta: $WEIGHTS not found: train the demo first (python -m retinanet_fl.demo)." >&2
    exit 2
fi
mkdir -p "$OUT"

# name|TEST.AUG overrides. The images are 160 px and the model was trained at 160 px only, so the
# copies stay near that size (Detectron2's defaults, 400-1200 px, are COCO's); MAX_SIZE 320 never
# limits these square images.
AUG="TEST.AUG.ENABLED True TEST.AUG.MAX_SIZE 320 TEST.AUG.FLIP"
VARIANTS=(
    "none|"
    "flip|$AUG True TEST.AUG.MIN_SIZES (160,)"
    "scales_160_240_flip|$AUG True TEST.AUG.MIN_SIZES (160,240)"
    "scales_128_160_192_flip|$AUG True TEST.AUG.MIN_SIZES (128,160,192)"
    "scales_128_160_192|$AUG False TEST.AUG.MIN_SIZES (128,160,192)"
)

{
    echo "# Test-time augmentation on synthetic_val"
    echo
    echo "Checkpoint \`$WEIGHTS\`, config \`$CONFIG\`; $(date -u +%Y-%m-%dT%H:%M:%SZ)," \
        "$(nproc) CPUs. Each row: \`train_net --eval-only\` (COCOEvaluator) with the overrides;" \
        "TTA merges the copies' detections by class-wise NMS (IoU 0.5) into the best 100."
    echo
    echo "| TTA | overrides | AP | AP50 | AP75 | APs | APm | APl | AP − no TTA | seconds |"
    echo "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"
} > "$OUT/tta.md"

BASE_AP=""
for variant in "${VARIANTS[@]}"; do
    name=${variant%%|*}
    overrides=${variant#*|}
    echo "measure_tta: $name ($overrides)" >&2
    start=$(date +%s)
    # shellcheck disable=SC2086  # the overrides are separate KEY VALUE words
    "$PY" -m retinanet_fl.train_net --config-file "$CONFIG" --eval-only \
        MODEL.WEIGHTS "$WEIGHTS" OUTPUT_DIR "$OUT/$name" $overrides > "$OUT/$name.log" 2>&1 || {
        echo "measure_tta: $name failed; see $OUT/$name.log" >&2
        exit 1
    }
    seconds=$(( $(date +%s) - start ))
    # Detectron2 prints the AP row last as "copypaste: AP,AP50,AP75,APs,APm,APl".
    row=$(grep -E "copypaste: [-0-9.,na]+$" "$OUT/$name.log" | tail -n 1 | sed 's/.*copypaste: //')
    if [ -z "$row" ]; then
        echo "measure_tta: no AP in $OUT/$name.log" >&2
        exit 1
    fi
    ap=${row%%,*}
    if [ -z "$BASE_AP" ]; then BASE_AP=$ap; fi
    delta=$(awk -v a="$ap" -v b="$BASE_AP" 'BEGIN { printf "%+.2f", a - b }')
    echo "| $name | \`${overrides:-–}\` | ${row//,/ | } | $delta | $seconds |" >> "$OUT/tta.md"
done
cat "$OUT/tta.md"
echo "measure_tta: wrote $OUT/tta.md (logs and detections under $OUT/)" >&2
