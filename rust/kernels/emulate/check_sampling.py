"""Checks the sampling kernel's logic on the CPU: sampling.cu compiled for the host against shim.cuh
(one OS thread per CUDA thread) and run on random rows, against a reference of the CPU sampler written
here in Python (mlc_core::sampler's rules: penalties and bias in f32, NaN/inf sanitising, the point-mass
fallback, greedy argmax, top_k / top_p / min_p, the inverse-CDF draw with a given uniform, logprobs and
top logprobs). Needs g++ with C++20; no GPU, no CUDA toolkit.

    python3 rust/kernels/emulate/check_sampling.py [--threads 64] [--seed 0] [--vocabs 1,7,100,1000] [--rows 12]

Prints every disagreeing row and exits non-zero if there is one. Block sizes below 1024 exercise the
same code with more elements per thread; --threads 1024 is the device's configuration (slower).
"""
import argparse, ctypes, math, os, random, shutil, struct, subprocess, sys, tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
KERNEL = os.path.join(HERE, "..", "kernels", "sampling.cu")


def build(threads, out_dir):
    shutil.copy(KERNEL, os.path.join(out_dir, "sampling.cu"))
    shutil.copy(os.path.join(HERE, "shim.cuh"), os.path.join(out_dir, "common.cuh"))
    shutil.copy(os.path.join(HERE, "driver.cpp"), os.path.join(out_dir, "driver.cpp"))
    so = os.path.join(out_dir, f"emulated{threads}.so")
    subprocess.run(["g++", "-std=c++20", "-O1", "-ffp-contract=off", "-fPIC", "-shared", f"-DSAMPLE_THREADS={threads}",
                    "-o", so, os.path.join(out_dir, "driver.cpp"), "-lpthread"], check=True)
    return ctypes.CDLL(so)

INF = float("inf"); NAN = float("nan"); FMAX = struct.unpack("f", struct.pack("I", 0x7f7fffff))[0]
MAXTOP = 20; OUT_WORDS = 4 + 2 * MAXTOP

def f32(x):
    try:
        return struct.unpack("f", struct.pack("f", x))[0]
    except OverflowError:
        return math.copysign(INF, x)

def sanitize(x):
    if math.isnan(x): return -INF
    return FMAX if x == INF else x

def ordered(x):
    b = struct.unpack("I", struct.pack("f", x + 0.0))[0]
    return (~b & 0xffffffff) if b >> 31 else (b | 0x80000000)

def rank(i, x):  # smaller is better
    return ((~ordered(x) & 0xffffffff) << 32) | i

def penalise(x, p, e):
    tok, count, bias, flags = e
    if flags & 1: x = f32(x / p["rep"]) if x > 0 else f32(x * p["rep"])
    if flags & 2: x = f32(x - f32(f32(count * p["freq"]) + p["pres"]))
    unb = x
    if flags & 4: x = f32(x + bias)
    return x, unb

def wexp(y): return f32(math.exp(y)) if y != -INF else 0.0

def reference(raw, p, entries, u):
    row = list(raw)
    unbiased = {}
    for e in entries:
        row[e[0]], unbiased[e[0]] = penalise(raw[e[0]], p, e)
    row = [sanitize(x) for x in row]
    best = min(range(len(row)), key=lambda i: rank(i, row[i]))
    if row[best] == -INF:
        r2 = list(row)
        for t, x in unbiased.items(): r2[t] = sanitize(x)
        b2 = min(range(len(r2)), key=lambda i: rank(i, r2[i]))
        best = b2 if r2[b2] > -INF else 0
        row = [-INF] * len(row); row[best] = 0.0
    peak = row[best]
    z = sum(wexp(f32(x - peak)) for x in row)
    lnz = math.log(z)
    lp = lambda i: f32(f32(row[i] - peak) - lnz)
    if p["temp"] <= 0:
        tok = best
    else:
        n = len(row); T = p["temp"]
        min_logit = -INF
        if 0 < p["top_k"] <= n:
            min_logit = sorted(row, reverse=True)[p["top_k"] - 1]
        end = None
        def weight(i, x, use_end, min_w):
            if x < min_logit: return 0.0
            if use_end and end is not None and (x < end[0] or (x == end[0] and i > end[1])): return 0.0
            w = wexp(f32(f32(x - peak) / T))
            return 0.0 if w < min_w else w
        if p["top_p"] < 1.0:
            ws = [weight(i, x, False, 0.0) for i, x in enumerate(row)]
            ranked = sorted((i for i in range(n) if ws[i] > 0), key=lambda i: rank(i, row[i]))
            total = sum(ws[i] for i in ranked)
            target = p["top_p"] * total
            mass = 0.0; kept = None
            for k, i in enumerate(ranked):
                if mass >= target: kept = k; break
                mass += ws[i]
            if kept is not None:
                last = ranked[max(kept, 1) - 1]
                end = (row[last], last)
        mw = max(p["min_p"], 0.0)
        ws = [weight(i, x, True, mw) for i, x in enumerate(row)]
        total = sum(ws); target = u * total; mass = 0.0; tok = best
        found = False
        for i, w in enumerate(ws):
            if w > 0:
                mass += w; tok = i
                if mass > target: found = True; break
    top = []
    if p["ntop"]:
        order = sorted(range(len(row)), key=lambda i: rank(i, row[i]))[: min(p["ntop"], len(row))]
        top = [(i, lp(i)) for i in order]
    return tok, lp(tok), top

def pack(rows):
    words = []; ents = []; start = 0; work_rows = 0
    for p, entries, u in rows:
        ub = struct.unpack("II", struct.pack("d", u))
        fb = lambda x: struct.unpack("I", struct.pack("f", x))[0]
        words += [ub[0], ub[1], fb(p["temp"]), fb(p["top_p"]), fb(p["min_p"]), fb(p["rep"]), fb(p["freq"]), fb(p["pres"]),
                  p["top_k"] & 0xffffffff, p["ntop"], start, start + len(entries), work_rows if entries else 0xffffffff, 0, 0, 0]
        work_rows += 1 if entries else 0
        for t, c, b, fl in entries: ents += [t, c, fb(b), fl]
        start += len(entries)
    return words + ents

def run(lib, batch_logits, rows, vocab):
    B = len(rows)
    L = (ctypes.c_float * (B * vocab))(*[x for r in batch_logits for x in r])
    W = (ctypes.c_float * max(1, sum(1 for r in rows if r[1]) * vocab))()
    pw = pack(rows)
    P = (ctypes.c_uint32 * max(1, len(pw)))(*pw)
    O = (ctypes.c_uint32 * (B * OUT_WORDS))()
    lib.emulate(L, W, P, O, B, vocab)
    res = []
    for b in range(B):
        o = O[b * OUT_WORDS:(b + 1) * OUT_WORDS]
        tf = lambda w: struct.unpack("f", struct.pack("I", w))[0]
        res.append((o[0], tf(o[1]), [(o[4 + 2 * j], tf(o[5 + 2 * j])) for j in range(o[2])]))
    return res

def close(a, b):
    return a == b or abs(a - b) <= 1e-5 * max(1.0, abs(a))


def random_case(rng, vocab):
    """One row: logits with ties, NaN, -inf, +inf (or none finite), parameters, listed tokens, uniform."""
    q = rng.choice([0, 0.5])
    x = [rng.gauss(0, 2) for _ in range(vocab)]
    if q:
        x = [round(v / q) * q for v in x]
    for i in range(vocab):
        t = rng.random()
        if t < 0.05:
            x[i] = x[rng.randrange(vocab)]
        elif t < 0.08:
            x[i] = rng.choice([NAN, -INF])
    if rng.random() < 0.2:
        x[rng.randrange(vocab)] = INF
    if rng.random() < 0.1:
        x = [rng.choice([NAN, -INF]) for _ in range(vocab)]
    if rng.random() < 0.3 and any(not math.isnan(v) for v in x):
        m = max(v for v in x if not math.isnan(v))
        for _ in range(2):
            x[rng.randrange(vocab)] = m
    x = [f32(v) for v in x]
    p = dict(temp=rng.choice([0.0, 1.0, 0.7, 1.5]), top_p=rng.choice([1.0, 0.9, 0.5, 0.0, 0.99]),
             top_k=rng.choice([0, 0, 1, 3, 50, -1, vocab]), min_p=rng.choice([0.0, 0.0, 0.1]),
             rep=rng.choice([1.0, 1.3]), freq=rng.choice([0.0, 0.4]), pres=rng.choice([0.0, 0.3]),
             ntop=rng.choice([0, 1, 5, 20]))
    p = {k: (f32(v) if isinstance(v, float) else v) for k, v in p.items()}
    entries = []
    for t in sorted(rng.sample(range(vocab), min(vocab, rng.randrange(0, 6)))):
        fl, c, b = 0, 0, 0.0
        if p["rep"] != 1.0 and rng.random() < 0.7:
            fl |= 1
        if (p["freq"] or p["pres"]) and rng.random() < 0.5:
            fl |= 2 | 1
            c = rng.randrange(1, 4)
        if rng.random() < 0.5:
            fl |= 4
            b = f32(rng.choice([-INF, 100.0, rng.uniform(-5, 5)]))
        if fl:
            entries.append((t, c, b, fl))
    return x, (p, entries, rng.random())


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--threads", type=int, default=64)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--vocabs", default="1,7,100,1000")
    ap.add_argument("--rows", type=int, default=12)
    a = ap.parse_args()
    rng = random.Random(a.seed)
    bad = total = 0
    with tempfile.TemporaryDirectory() as tmp:
        lib = build(a.threads, tmp)
        for vocab in (int(v) for v in a.vocabs.split(",")):
            logits, rows = zip(*(random_case(rng, vocab) for _ in range(a.rows)))
            got = run(lib, logits, rows, vocab)
            for i, ((p, entries, u), x, g) in enumerate(zip(rows, logits, got)):
                want = reference(x, p, entries, u)
                total += 1
                ok = (want[0] == g[0] and close(want[1], g[1]) and [t for t, _ in want[2]] == [t for t, _ in g[2]]
                      and all(close(w[1], h[1]) for w, h in zip(want[2], g[2])))
                if not ok:
                    bad += 1
                    print("MISMATCH vocab", vocab, "row", i, p, "entries", entries, "u", u)
                    print("  want", want[0], want[1], want[2][:5])
                    print("  got ", g[0], g[1], g[2][:5])
    print(f"{total - bad}/{total} rows agree")
    sys.exit(1 if bad else 0)


if __name__ == "__main__":
    main()
