"""The benchmark model converted by our own tools: `mlc_llm convert_weight --quantization q4f16_1` and
`mlc_llm gen_config` on the random bf16 HF checkpoint the setup phase wrote. Records the conversion time and
the size of what was written (reused when the directory already holds a finished conversion of the same
checkpoint)."""

import json
import os
import subprocess
import sys
import time


def _run(args: list) -> float:
    t = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "mlc_llm", *args], capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"mlc_llm {args[0]} failed ({done.returncode}): {done.stderr[-2000:]}")
    return time.perf_counter() - t


def phase_mlc_convert(a: dict, rec) -> None:
    src, out = a["model_dir"], a["mlc_dir"]
    stamp = os.path.join(out, ".converted_from")
    src_stamp = os.path.join(src, "config.json")
    key = f"{os.path.getmtime(src_stamp)}"
    if os.path.exists(stamp) and open(stamp).read() == key:
        rec.put("mlc_convert", reused=True, mlc_dir=out)
        return
    convert_s = _run(["convert_weight", src, "--quantization", "q4f16_1", "-o", out])
    config_s = _run(["gen_config", src, "--quantization", "q4f16_1", "--conv-template", "llama-3", "-o", out])
    index = json.load(open(os.path.join(out, "tensor-cache.json")))
    rec.put("mlc_convert", reused=False, mlc_dir=out, convert_s=round(convert_s, 1), gen_config_s=round(config_s, 1),
            shards=len(index["records"]), metadata=index["metadata"])
    with open(stamp, "w") as f:
        f.write(key)
