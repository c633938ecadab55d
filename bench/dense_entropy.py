#!/usr/bin/env python3
"""Where the bytes of a dense fine-tune's arithmetic-delta objects go (issue 12).

For each float32 tensor of BASE and NEW (safetensors), with d = ordered(new) - ordered(base) (the difference of the
bit patterns read as sign-magnitude ordered integers, what `adelta4` codes) and the context c = the base's exponent
byte, prints bits per element of:
  gauss    the noise's own entropy: mean over elements of log2(sigma / ulp(base)) + log2(sqrt(2 pi e)), sigma the
           standard deviation of new - base in float64 (a lower bound for any coder that sees only the base)
  H(d|c)~  the empirical conditional entropy of the exact difference given the context, estimated by modelling the
           6 bits below the leading one (below them the bits are uniform; the plug-in entropy of d itself is biased
           low with ~10^4 distinct values per context)
  m1 m2 m4 the cost of coding (bit length, j bits below the leading one) per context with exact tables, the sign and
           the other bits raw: m1 is the model of payload version 2, m2 and m4 finer ones
  v2       m1 with version 2's real tables: contexts under 1024 elements pooled, frequencies rounded to 1/4096,
           plus the serialised tables, 8-byte chunk headers and 16 bytes of rANS states per 2^20-element chunk
  v3       the same for version 3: m2 with the same kind of tables, or v2's coding when that is smaller (version 3's
           encoder chooses per object; + its 1-byte choice); --v3-precision and --v3-bits-below try other models
  actual   the object's size in the store (`tessera ls --json REV:model.safetensors` in --repo), trailer included
Totals are also given as x raw (bits / 32), the unit of bench_git's `dense fine-tune growth / raw`.

Usage: bench/dense_entropy.py BASE NEW [--repo DIR [--rev REV] [--path model.safetensors]] [--all]
"""
import argparse, json, math, os, signal, subprocess, sys
import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import make_checkpoint as mc  # noqa: E402

CHUNK = 1 << 20
OWN_TABLE_MINIMUM = 1024


def ordered(u):
    u = u.astype(np.int64)
    m = u & 0x7FFFFFFF
    return np.where((u >> 31) & 1 == 0, m, -m - 1)


def bit_length(m):
    k = np.zeros(m.shape, np.int64)
    v = m.copy()
    for shift in (32, 16, 8, 4, 2, 1):
        big = v >= (1 << shift)
        k[big] += shift
        v[big] >>= shift
    return k + (v > 0)


def entropy_bits(counts):
    c = counts[counts > 0].astype(np.float64)
    return float(-(c * np.log2(c / c.sum())).sum())


def symbols(m, k, j):
    """The symbols of `DeltaSymbols` with j bits below the leading one (version 2: j = 1, version 3: j = 2): |d| when
    k <= j + 1, else (k - j) * 2^j + those bits; and the raw bits left below them (besides the sign)."""
    low = np.maximum(k - 1 - j, 0)
    sym = np.where(k > j + 1, ((k - j) << j) | ((m >> low) & ((1 << j) - 1)), m)
    return sym, low


def alphabet(j, bits=32):
    return (bits - j + 1) << j


def model_bits(ctx, sym, alphabet):
    """Σ over contexts of the empirical entropy of the symbols in that context (exact tables, no table cost)."""
    h = np.bincount(ctx * alphabet + sym, minlength=256 * alphabet).reshape(256, alphabet)
    return sum(entropy_bits(row) for row in h if row.any()), h


def normalise(counts, scale):
    """Version 2's rounding (StaticDeltaCoder.normalise): every occurring symbol at least 1, the largest absorbs."""
    total = counts.sum()
    f = np.where(counts > 0, np.maximum(1, np.rint(counts * scale / total)), 0).astype(np.int64)
    while f.sum() != scale:
        i = int(np.argmax(f))
        if f.sum() < scale:
            f[i] += scale - f.sum()
        else:
            take = min(f.sum() - scale, f[i] - 1)
            if take == 0:
                break
            f[i] -= take
    return f


def varint_bytes(v):
    n = 1
    while v >= 0x80:
        v >>= 7
        n += 1
    return n


def coded_bits(h, scale, table_bytes_of):
    """Bits of coding histogram `h` (contexts × alphabet) with static tables of precision `scale`, the tables'
    serialised bytes included: contexts under OWN_TABLE_MINIMUM share one pooled table."""
    totals = h.sum(axis=1)
    own = [c for c in range(256) if totals[c] >= OWN_TABLE_MINIMUM]
    groups = [h[c] for c in own] + [h[[c for c in range(256) if totals[c] < OWN_TABLE_MINIMUM]].sum(axis=0)]
    bits = 0.0
    serialised = 1 + len(own)
    for counts in groups:
        if not counts.any():
            counts = counts.copy()
            counts[0] = 1
        f = normalise(counts, scale)
        nz = counts > 0
        bits += float(-(counts[nz] * np.log2(f[nz] / scale)).sum())
        serialised += table_bytes_of(f)
    return bits, serialised


def table_bytes(f):
    """A serialised table (versions 2 and 3): first and last symbol, then LEB128 frequencies."""
    nz = np.nonzero(f)[0]
    return 2 + sum(varint_bytes(int(v)) for v in f[nz[0]:nz[-1] + 1])


def analyse(b_bytes, n_bytes, v3_precision, v3_bits_below):
    b = np.frombuffer(b_bytes, np.uint32)
    nw = np.frombuffer(n_bytes, np.uint32)
    n = b.size
    d = ordered(nw) - ordered(b)
    m = np.abs(d)
    k = bit_length(m)
    ctx = ((b >> 23) & 0xFF).astype(np.int64)
    signs = int((d != 0).sum())
    out = {"n": n}
    bf = b.view(np.float32).astype(np.float64)
    noise = nw.view(np.float32).astype(np.float64) - bf
    ok = np.isfinite(noise) & np.isfinite(bf)
    sigma = float(noise[ok].std()) if ok.any() else 0.0
    e = ((b >> 23) & 0xFF).astype(np.int64)
    ulp = np.ldexp(1.0, (np.maximum(e, 1) - 150).astype(np.int32))
    if sigma > 0:
        out["gauss"] = float(np.log2(sigma / ulp[ok]).sum()) + ok.sum() * math.log2(math.sqrt(2 * math.pi * math.e))
    chunks = (n + CHUNK - 1) // CHUNK
    for j in (1, 2, 4, 6):
        sym, low = symbols(m, k, j)
        bits, h = model_bits(ctx, sym, alphabet(j))
        raw = signs + int(low.sum())
        out[f"m{j}"] = bits + raw
        if j == 1:
            cb, tb = coded_bits(h, 4096, table_bytes)
            out["v2"] = cb + raw + 8 * (tb + 2 + chunks * (8 + 16))
        if j == v3_bits_below:
            cb, tb = coded_bits(h, v3_precision, table_bytes)
            out["v3"] = cb + raw + 8 * (tb + 2 + chunks * (8 + 16))
    out["v3"] = min(out["v3"], out["v2"]) + 8
    out["H(d|c)~"] = out["m6"]
    return out


def main():
    signal.signal(signal.SIGPIPE, signal.SIG_DFL)
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("base")
    ap.add_argument("new")
    ap.add_argument("--repo", help="a repository where NEW is committed as --path: its objects' actual sizes")
    ap.add_argument("--rev", default="HEAD")
    ap.add_argument("--path", default="model.safetensors")
    ap.add_argument("--tessera", default=os.environ.get("TESSERA_BIN", "tessera"))
    ap.add_argument("--v3-precision", type=int, default=4096)
    ap.add_argument("--v3-bits-below", type=int, default=2)
    ap.add_argument("--all", action="store_true", help="a line per tensor (default: tensors over 1M elements)")
    a = ap.parse_args()
    base, _ = mc.load(a.base)
    new, _ = mc.load(a.new)
    actual = {}
    if a.repo:
        listing = json.loads(subprocess.run([a.tessera, "ls", "--json", f"{a.rev}:{a.path}"], cwd=a.repo, check=True,
                                            stdout=subprocess.PIPE, text=True).stdout)
        actual = {t["name"]: (8 * t["object_bytes"], t["encoding"].split("@")[0]) for t in listing["tensors"]}
    cols = ["gauss", "H(d|c)~", "m1", "m2", "m4", "v2", "v3", "actual"]
    print(f"bits per element; v3 = {a.v3_bits_below} bits below the leading one, 1/{a.v3_precision} precision")
    print(f"{'tensor':28}{'elements':>10}" + "".join(f"{c:>9}" for c in cols) + "  encoding")
    total = {c: 0.0 for c in cols}
    count = 0
    for name in sorted(base, key=lambda t: (-len(base[t][2]), t)):
        if base[name][0] != "F32" or name not in new or new[name][2] == base[name][2]:
            continue
        r = analyse(base[name][2], new[name][2], a.v3_precision, a.v3_bits_below)
        if name in actual:
            r["actual"] = actual[name][0]
        count += r["n"]
        for c in cols:
            total[c] += r.get(c, float("nan"))
        if a.all or r["n"] > 1_000_000:
            enc = actual.get(name, (0, ""))[1]
            print(f"{name:28}{r['n']:>10}" + "".join(f"{r.get(c, float('nan')) / r['n']:>9.4f}" for c in cols) + f"  {enc}")
    print(f"{'all':28}{count:>10}" + "".join(f"{total[c] / count:>9.4f}" for c in cols))
    print(f"{'x raw (/32)':38}" + "".join(f"{total[c] / count / 32:>9.5f}" for c in cols))


if __name__ == "__main__":
    main()
