"""JSON-lines records written by a phase process as it goes, so a phase killed at its time limit keeps
what it measured so far."""

import json
import sys
import time
import traceback


class Recorder:
    def __init__(self, path: str, phase: str):
        self.path = path
        self.phase = phase
        self.t0 = time.perf_counter()
        self.f = open(path, "a", buffering=1)

    def put(self, kind: str, **data) -> None:
        data = {"kind": kind, "t_s": round(time.perf_counter() - self.t0, 3), **data}
        self.f.write(json.dumps(data, default=str) + "\n")
        self.f.flush()
        brief = {k: v for k, v in data.items() if not isinstance(v, (dict, list)) or k == "error"}
        print(f"[{self.phase}] {kind}: {json.dumps(brief, default=str)[:400]}", flush=True)

    def error(self, where: str, exc: BaseException) -> None:
        tb = traceback.format_exc()
        self.put("error", where=where, error=f"{type(exc).__name__}: {exc}"[:2000], traceback=tb[-4000:])
        print(tb, file=sys.stderr, flush=True)


def read_records(path: str) -> list:
    out = []
    try:
        with open(path) as f:
            for line in f:
                line = line.strip()
                if line:
                    try:
                        out.append(json.loads(line))
                    except ValueError:
                        pass  # a line cut off by a kill
    except OSError:
        pass
    return out
