#!/usr/bin/env bash
# Runs ON the GPU host, from the repo root, with the wheels installed in $SITE and the random models written
# (benches/gpu/run_on_host.sh --only bandwidth,setup --gguf-q4): batch-1 greedy decode tok/s of each model
# (benches/gpu/profile_decode.py, 256 tokens after a 128-token prompt) under each setting of one environment
# variable, alternating settings ROUNDS times so that drift hits both alike. One JSON line per run in
# $OUT/env_ab.jsonl, a summary (median per model and setting) at the end.
#
#   VAR=MLC_PDL VALUES="0 1" MODELS="bf16:/tmp/mlc_bench_llama3-8b q4_0:/tmp/mlc_bench_llama3-8b_q4_0.gguf" \
#       bash benches/gpu/run_env_ab_on_host.sh
#
# A tag starting with q4 runs with {"quantized_matmul": true}.
set -uo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cd "$ROOT"
OUT=${OUT:-$ROOT/gpu_out}
SITE=${SITE:-/tmp/site}
VAR=${VAR:-MLC_PDL} VALUES=${VALUES:-"0 1"} ROUNDS=${ROUNDS:-2}
MODELS=${MODELS:-"bf16:/tmp/mlc_bench_llama3-8b q4_0:/tmp/mlc_bench_llama3-8b_q4_0.gguf"}
mkdir -p "$OUT"
source "$ROOT/benches/gpu/host_env.sh"
gpu=$(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -1)
for round in $(seq "$ROUNDS"); do
    for m in $MODELS; do
        tag=${m%%:*} model=${m#*:}
        cfg='{}'
        [[ $tag == q4* ]] && cfg='{"quantized_matmul": true}'
        for v in $VALUES; do
            r=$(env "$VAR=$v" timeout 120 "$PY" benches/gpu/profile_decode.py "$model" --config "$cfg" --new 256 2>/dev/null | tail -1)
            echo "{\"round\": $round, \"model\": \"$tag\", \"var\": \"$VAR\", \"value\": \"$v\", \"device\": \"$gpu\", \"result\": ${r:-null}}" \
                | tee -a "$OUT/env_ab.jsonl"
        done
    done
done
"$PY" - "$OUT/env_ab.jsonl" <<'PYEOF'
import collections, json, statistics, sys
runs = collections.defaultdict(list)
for line in open(sys.argv[1]):
    d = json.loads(line)
    if d["result"]:
        runs[(d["model"], d["var"], d["value"])].append(d["result"]["decode_tok_s"])
crcs = collections.defaultdict(set)
for line in open(sys.argv[1]):
    d = json.loads(line)
    if d["result"]:
        crcs[d["model"]].add(d["result"].get("ids_crc32"))
for (model, var, value), v in sorted(runs.items()):
    print(f"{model:<10} {var}={value:<4} decode tok/s median {statistics.median(v):8.1f}  runs {[round(x, 1) for x in v]}")
for model, c in sorted(crcs.items()):
    print(f"{model:<10} greedy ids {'identical in every run' if len(c) == 1 else f'DIFFER between runs: {sorted(c)}'}")
PYEOF
