#!/usr/bin/env bash
# Runs ON the GPU host, from the repo root: the per-token (decode) attention kernel's time per layer
# (Llama-3-8B's 32 heads / 8 KV heads / head_dim 128, bf16 and FP8 caches) at several partition sizes
# (MLC_ATTN_SPLIT_MIN_KEYS, read once per process: one process per value), then Nsight Compute's report of
# one launch at batch 64 x 1024 keys (bf16 and FP8) when ncu is on the PATH. Writes $OUT/attn_split.jsonl and
# $OUT/ncu_attn_*.txt.
#
#   run(command="bash benches/gpu/attn_split_sweep.sh", carry=["dist/cuda", "dist/pywheels"])
#
# SPLIT_KEYS (default "64 128 256 512") picks the partition sizes; NCU=0 skips the profile; MLC_DECODE_TC=0
# (passed through) times the CUDA-core per-token kernel instead of the tensor-core one; SKIP_INSTALL=1
# reuses $SITE.
set -u
SITE=${SITE:-/tmp/site}
OUT=${OUT:-gpu_out}
PY=${PY:-/opt/torch/.venv/bin/python}
[[ -x $PY ]] || PY=python3
mkdir -p "$OUT"
if [[ "${SKIP_INSTALL:-0}" != 1 ]]; then
    rm -rf "$SITE"
    "$PY" -m pip install -q --no-index --no-deps --no-compile --target "$SITE" dist/cuda/*.whl dist/pywheels/*.whl
fi
CU13=$("$PY" -c 'import site,os;print(next((os.path.join(p,"nvidia","cu13","lib") for p in site.getsitepackages() if os.path.isdir(os.path.join(p,"nvidia","cu13","lib"))),""))')
export LD_LIBRARY_PATH="${LD_LIBRARY_PATH:+$LD_LIBRARY_PATH:}$CU13"
case_py=$(mktemp --suffix .py)
cat > "$case_py" <<'PY'
import json, os, sys
import mlc_llm._core as c
shapes = {"b1_ctx128": [[1, 128]], "b1_ctx1024": [[1, 1024]], "b1_ctx4096": [[1, 4096]],
          "b16_ctx4096": [[1, 4096]] * 16, "b64_ctx1024": [[1, 1024]] * 64, "b256_ctx300": [[1, 300]] * 256}
names = sys.argv[1].split(",") if len(sys.argv) > 1 else list(shapes)
repeat = int(os.environ.get("REPEAT", "30"))
for kv in ("bf16", "fp8"):
    for name in names:
        seqs = shapes[name]
        case = {"dtype": "bf16", "num_heads": 32, "num_kv_heads": 8, "head_dim": 128, "block_size": 16, "seqs": seqs,
                "seed": 5, "reference": False, "repeat": repeat, **({"kv_dtype": "fp8"} if kv == "fp8" else {})}
        r = json.loads(c._attention_check("cuda:0", json.dumps(case)))
        row = 128 + 4 if kv == "fp8" else 256
        gb = sum(ctx for _, ctx in seqs) * 8 * row * 2 / r["attend_us"] / 1e3
        print(json.dumps({"split_min_keys": os.environ.get("MLC_ATTN_SPLIT_MIN_KEYS", "default"),
                          "decode_tc": os.environ.get("MLC_DECODE_TC", "1"), "kv": kv, "shape": name,
                          "attend_us": round(r["attend_us"], 2), "kv_gb_per_s": round(gb, 1), "num_work": r["num_work"]}), flush=True)
PY
for keys in ${SPLIT_KEYS:-64 128 256 512}; do
    MLC_ATTN_SPLIT_MIN_KEYS=$keys PYTHONPATH="$SITE" timeout 60 "$PY" "$case_py" >> "$OUT/attn_split.jsonl" 2>> "$OUT/attn_split.err"
    echo "[attn_split] $keys rc=$?"
done
"$PY" - "$OUT/attn_split.jsonl" <<'PY'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
for kv in ("bf16", "fp8"):
    shapes = sorted({r["shape"] for r in rows}, key=lambda s: [r["shape"] for r in rows].index(s))
    print(f"{kv}: us per layer (GB/s) by split_min_keys")
    for s in shapes:
        cells = [f"{r['split_min_keys']:>4}{'' if r.get('decode_tc', '1') != '0' else '/cc'}: {r['attend_us']:7.1f} ({r['kv_gb_per_s']:6.0f})"
                 for r in rows if r["kv"] == kv and r["shape"] == s]
        print(f"  {s:12} " + "  ".join(cells))
PY
if [[ "${NCU:-1}" == 0 ]]; then
    echo "[attn_split] NCU=0: no profile"
elif command -v ncu > /dev/null; then
    for kv in bf16 fp8; do
        sed -i "s/^for kv in .*/for kv in (\"$kv\",):/" "$case_py"
        REPEAT=1 PYTHONPATH="$SITE" timeout 120 ncu --clock-control none --set full -k regex:paged_attention --launch-count 1 \
            "$PY" "$case_py" b64_ctx1024 > "$OUT/ncu_attn_$kv.txt" 2>&1
        echo "[attn_split] ncu $kv rc=$?"
        grep -hE "Duration|DRAM Throughput|Achieved Occupancy|Theoretical Occupancy|Registers Per|Block Limit|Warp Cycles Per Issued|Issue Slots Busy|Eligible|Stall" "$OUT/ncu_attn_$kv.txt" | head -30
    done
else
    echo "[attn_split] no ncu on this host"
fi
