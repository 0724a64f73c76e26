#!/usr/bin/env bash
# AP of the demo trained in fp32 and with bf16 autocast (SOLVER.AMP.ENABLED True) for each seed,
# two runs at a time on one thread each; a run already finished (its metrics.json holds the box AP)
# is not trained again. Prints and writes OUT/bf16_parity.md: AP per run and the paired
# bf16 - fp32 difference, mean and sample sd over the seeds. Run from the repository root.
#   bash scripts/measure_bf16_parity.sh [PYTHON] [OUT] [SEED ...]
set -euo pipefail
PY=${1:-.venv/bin/python}
OUT=${2:-output/parity}
shift $(( $# < 2 ? $# : 2 ))
if [ $# -gt 0 ]; then SEEDS=("$@"); else SEEDS=(0 1); fi
mkdir -p "$OUT"

train() {  # name, overrides...: one demo run into OUT/name unless it finished before
    local name=$1; shift
    if ! grep -q '"bbox/AP"' "$OUT/$name/metrics.json" 2>/dev/null; then
        OMP_NUM_THREADS=1 "$PY" -m retinanet_fl.demo --output-dir "$OUT/$name" "$@" \
            > "$OUT/$name.log" 2>&1
    fi
}
for seed in "${SEEDS[@]}"; do
    train "fp32_s$seed" SEED "$seed" &
    train "bf16_s$seed" SEED "$seed" SOLVER.AMP.ENABLED True &
    wait
done

"$PY" - "$OUT" "${SEEDS[@]}" <<'PYEOF'
import statistics, sys
from pathlib import Path

sys.path.insert(0, "tools")
from ablation import read_eval_results

out, seeds = Path(sys.argv[1]), sys.argv[2:]

def final_ap(run: str) -> float:
    return read_eval_results(out / run)["AP"]

rows = [(s, final_ap(f"fp32_s{s}"), final_ap(f"bf16_s{s}")) for s in seeds]
deltas = [bf16 - fp32 for _, fp32, bf16 in rows]
lines = ["# bf16 autocast against fp32: the demo's AP on synthetic_val", "",
         "| seed | fp32 AP | bf16 AP | bf16 - fp32 |", "|---:|---:|---:|---:|"]
lines += [f"| {s} | {fp32:.1f} | {bf16:.1f} | {bf16 - fp32:+.2f} |" for s, fp32, bf16 in rows]
sd = statistics.stdev(deltas) if len(deltas) > 1 else float("nan")
lines += ["", f"bf16 - fp32: mean {statistics.mean(deltas):+.2f}, sd {sd:.2f} (n = {len(deltas)})"]
(out / "bf16_parity.md").write_text("\n".join(lines) + "\n")
print("\n".join(lines))
PYEOF
