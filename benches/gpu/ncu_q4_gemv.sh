#!/usr/bin/env bash
# Runs ON the GPU host, from the repo root: Nsight Compute's full report of one 4-bit tensor-core GEMV launch
# per Llama-3-8B shape (default gate_up 28672 x 4096 and down 4096 x 14336, f16, one token), to see what bounds it
# (DRAM throughput, occupancy, stall reasons). Reports land in $OUT/ncu_full_<rows>x<cols>.txt.
#
#   run(command="bash benches/gpu/ncu_q4_gemv.sh", carry=["dist/cuda", "dist/pywheels"], kind="nvidia-h100-x1")
set -u
SITE=${SITE:-/tmp/site}
OUT=${OUT:-gpu_out}
mkdir -p "$OUT"
rm -rf "$SITE"
python3 -m pip install -q --no-index --no-deps --no-compile --target "$SITE" dist/cuda/*.whl dist/pywheels/*.whl
case_py=$(mktemp --suffix .py)
cat > "$case_py" <<'PY'
import json, sys
import mlc_llm._core as c
rows, cols = int(sys.argv[1]), int(sys.argv[2])
print(c._q4_check("cuda:0", json.dumps({"dtype": sys.argv[3], "tokens": int(sys.argv[4]), "rows": rows, "cols": cols, "repeat": 2, "seed": 1})))
PY
# SHAPES: ROWSxCOLS words (default gate_up and down); DTYPE: the activations' (default f16); TOKENS (default 1);
# KERNEL: the regex of the kernel to profile (default q4_gemv_mma; q4_gemm_tc for the GEMM, 25-128 tokens).
for shape in ${SHAPES:-28672x4096 4096x14336}; do
    PYTHONPATH="$SITE" timeout 150 ncu --clock-control none --set full -k "regex:${KERNEL:-q4_gemv_mma}" --launch-count 1 \
        python3 "$case_py" ${shape/x/ } "${DTYPE:-f16}" "${TOKENS:-1}" > "$OUT/ncu_full_${shape}_t${TOKENS:-1}.txt" 2>&1
    echo "[ncu_q4_gemv] $shape rc=$?"
done
grep -E "Duration|Stall|stall|DRAM Throughput|Memory Throughput|Achieved Occupancy|Theoretical Occupancy|Registers Per|Block Limit|Waves Per SM|L2 Hit|Warp Cycles Per Issued|Issue Slots Busy|Eligible|Active Warps" "$OUT"/ncu_full_*.txt | cut -c1-220 | head -120
