"""benches/gpu/kernel_profile.py's arithmetic on Nsight Compute's CSV (the GPU run itself needs a device):
kernels keyed by name, grid and block, and one decode step's kernels as the difference of two runs."""
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "benches", "gpu"))
import kernel_profile  # noqa: E402

HEADER = '"ID","Process ID","Process Name","Host Name","Kernel Name","Context","Stream","Block Size","Grid Size",' \
    '"Device","CC","Section Name","Metric Name","Metric Unit","Metric Value"\n'


def _csv(path, launches):
    """launches: (kernel, grid, ns) per launch, as ncu --csv --print-units base writes them."""
    with open(path, "w") as f:
        f.write("==PROF== Connected to process 1 (/usr/bin/python3)\n")
        f.write(HEADER)
        for i, (name, grid, ns) in enumerate(launches):
            f.write(f'"{i}","1","python3","h","{name}","1","7","(256, 1, 1)","{grid}","0","9.0",'
                    f'"Command line profiler metrics","gpu__time_duration.sum","ns","{ns:,}"\n')
    return str(path)


def test_totals_key_by_grid_and_sum_durations(tmp_path):
    log = _csv(tmp_path / "a.csv", [("gemv", "(256, 1, 1)", 1500), ("gemv", "(256, 1, 1)", 2500),
                                    ("gemv", "(384, 1, 1)", 1000)])
    t = kernel_profile.kernel_totals(log)
    assert t == {"gemv (256,1,1) (256,1,1)": [2, 4000.0], "gemv (384,1,1) (256,1,1)": [1, 1000.0]}


def test_step_rows_cancel_what_both_runs_share(tmp_path):
    # Both runs prefill once (12 us); the longer one decodes 8 steps more, each a 3 us norm and a 10 us GEMV.
    prefill = [("prefill", "(8, 1, 1)", 12000)]
    step = [("norm", "(1, 1, 1)", 3000), ("gemv", "(256, 1, 1)", 10000)]
    short = kernel_profile.kernel_totals(_csv(tmp_path / "s.csv", prefill + step * 4))
    long = kernel_profile.kernel_totals(_csv(tmp_path / "l.csv", prefill + step * 12))
    rows = kernel_profile.step_rows(short, long, 8)
    assert [(r["kernel"].split()[0], r["launches_per_step"], round(r["us_per_step"], 6)) for r in rows] == [
        ("gemv", 1.0, 10.0), ("norm", 1.0, 3.0)]
