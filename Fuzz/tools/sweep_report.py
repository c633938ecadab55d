#!/usr/bin/env python3
"""Helpers of scripts/bitflip-sweep.sh.

    sweep_report.py reproducer WORK ID INDEX REGION OFFSET BIT KIND   save the variant that ended a sweep process
    sweep_report.py report WORK TESSERA                                 tables, fsck and checkout checks; exit 1 on findings

WORK is the sweep's directory: WORK/objects (Fuzz/tools/make_repo.py output), WORK/results (the sweep's lines),
WORK/crashes (reproducers, in the FuzzObject input format: "BASE", u32 length, base object, object).
"""
import collections
import hashlib
import os
import re
import shutil
import struct
import subprocess
import sys

TRAILER = 88
KEEP_ALL_LIMIT = 256 << 10  # Fuzz/Sources/BitflipSweep keeps every variant of objects up to this size


def trailer_field(offset):
    for lo, hi, name in ((0, 32, "raw-sha256"), (32, 64, "base-id"), (64, 72, "raw-length"), (72, 73, "encoding"),
                         (73, 74, "width"), (74, 75, "chunk-log2"), (75, 76, "reserved75"), (76, 80, "magic"),
                         (80, 88, "reserved80")):
        if lo <= offset < hi:
            return name


def objects(work):
    rows = [l.rstrip("\n").split("\t") for l in open(os.path.join(work, "objects", "objects.tsv"))]
    return [dict(label=r[0], id=r[1], encoding=r[2], path=r[3]) for r in rows]


def variant(obj, region, offset, bit):
    data = bytearray(open(obj["path"], "rb").read())
    at = offset if region == "payload" else len(data) - TRAILER + offset
    data[at] ^= 1 << bit
    return bytes(data)


def with_base(work, data):
    """The FuzzObject input format: a delta's base object in front of it."""
    base_id = data[-TRAILER + 32:-TRAILER + 64].hex()
    if base_id == "00" * 32:
        return data
    by_id = {o["id"]: o for o in objects(work)}
    if base_id not in by_id:
        return data
    base = open(by_id[base_id]["path"], "rb").read()
    return b"BASE" + struct.pack("<I", len(base)) + base + data


def reproducer(work, oid, index, region, offset, bit, kind):
    obj = next(o for o in objects(work) if o["id"] == oid)
    data = variant(obj, region, int(offset), int(bit))
    name = "%s-%s%s.%s-%s" % (re.sub(r"[^A-Za-z0-9_-]", "-", obj["label"]), region, offset, bit, kind)
    os.makedirs(os.path.join(work, "crashes"), exist_ok=True)
    path = os.path.join(work, "crashes", name)
    with open(path, "wb") as f:
        f.write(with_base(work, data))
    print(path)


def ranges(offsets):
    """[1,2,3,7] -> '1-3,7'"""
    out, start, prev = [], None, None
    for o in sorted(offsets):
        if start is None:
            start = prev = o
        elif o == prev + 1:
            prev = o
        else:
            out.append(str(start) if start == prev else "%d-%d" % (start, prev))
            start = prev = o
    if start is not None:
        out.append(str(start) if start == prev else "%d-%d" % (start, prev))
    return ",".join(out)


def git_env(work):
    home = os.path.join(work, "objects", "home")
    env = dict(os.environ, HOME=home, GIT_CONFIG_NOSYSTEM="1", GIT_TERMINAL_PROMPT="0", LC_ALL="C",
               SWIFT_BACKTRACE="enable=no")
    env.pop("GIT_DIR", None)
    env.pop("GIT_WORK_TREE", None)
    return env


SIGNAL_WORDS = ("died of signal", "Fatal error", "Illegal instruction", "Segmentation fault", "Aborted",
                "Trace/breakpoint trap", "Bus error", "Killed")


def died(status, stderr):
    """A process (or the filter git ran) that a signal ended: git prints the shell's words for the signal."""
    return status < 0 or 128 < status < 128 + 65 or any(w in stderr for w in SIGNAL_WORDS)


def report(work, tessera):
    objs = objects(work)
    by_id = {o["id"]: o for o in objs}
    size = {o["id"]: os.path.getsize(o["path"]) for o in objs}
    classes = ["detected", "identical", "undetected", "inconsistent", "unclean", "crash", "hang", "oom"]
    count = collections.defaultdict(collections.Counter)
    ignored = collections.defaultdict(lambda: collections.defaultdict(set))
    outcome = {}
    for line in open(os.path.join(work, "results"), errors="replace"):
        f = line.split()
        if len(f) >= 6 and f[0] == "v":
            oid, region, offset, bit, cls = f[1], f[2], int(f[3]), int(f[4]), f[5]
            key = (oid, region, offset, bit)
            if key in outcome:
                continue  # a resumed process never repeats a variant; guard anyway
            outcome[key] = cls
            count[oid][cls] += 1
            if cls == "identical":
                ignored[oid][region].add(offset)
        elif f and f[0] == "skip":
            print("skipped: " + line.strip())
    findings = 0
    print()
    print("Bit-flip sweep: every trailer bit and %s payload bits of each object, each variant stored under its own"
          % os.environ.get("TESSERA_SWEEP_PAYLOAD_BITS", "8192 (at most)"))
    print("SHA-256 (as a hostile remote would serve it) and decoded two ways (streamed; into a buffer of the expected length).")
    print()
    head = "%-22s %-13s %8s %7s" % ("object", "encoding", "bytes", "tried") + "".join(" %9s" % c for c in classes)
    print(head)
    print("-" * len(head))
    total = collections.Counter()
    for o in objs:
        c = count[o["id"]]
        tried = sum(c.values())
        total.update(c)
        total["tried"] += tried
        print("%-22s %-13s %8d %7d" % (o["label"][:22], o["encoding"], size[o["id"]], tried)
              + "".join(" %9d" % c[k] for k in classes))
    print("%-22s %-13s %8s %7d" % ("total", "", "", total["tried"]) + "".join(" %9d" % total[k] for k in classes))
    bad = sum(total[k] for k in ("undetected", "inconsistent", "unclean", "crash", "hang", "oom"))
    findings += bad
    print()
    print("Bytes whose flips decode to the original bytes (ignored by the decoder; trailer offsets from its start):")
    for o in objs:
        for region in ("trailer", "payload"):
            offs = ignored[o["id"]][region]
            if not offs:
                continue
            if region == "trailer":
                fields = collections.defaultdict(list)
                for off in sorted(offs):
                    fields[trailer_field(off)].append(off)
                desc = "; ".join("%s %s" % (k, ranges(v)) for k, v in fields.items())
            else:
                desc = "payload bytes " + ranges(offs)
            print("  %-22s %s: %s" % (o["label"][:22], region, desc))
    for cls in ("undetected", "inconsistent", "unclean", "crash", "hang", "oom"):
        hits = [k for k, v in outcome.items() if v == cls]
        if hits:
            print()
            print("%s (%d): object, region, byte, bit" % (cls, len(hits)))
            for oid, region, offset, bit in sorted(hits)[:40]:
                field = " (%s)" % trailer_field(offset) if region == "trailer" else ""
                print("  %-22s %s %d.%d%s" % (by_id[oid]["label"][:22], region, offset, bit, field))
            if len(hits) > 40:
                print("  ... %d more" % (len(hits) - 40))

    index = os.path.join(work, "crashes", "index.tsv")
    if os.path.exists(index):
        sites = collections.defaultdict(list)
        for line in open(index, errors="replace"):
            f = line.rstrip("\n").split("\t")
            f += [""] * (4 - len(f))
            sites[(f[1], re.sub(r"[0-9]{3,}", "N", re.sub(r"^==[0-9]+== ", "", f[2])), f[3])].append(f[0])
        print()
        print("Where the process died (reproducers in %s, in the FuzzObject input format):" % os.path.dirname(index))
        for (kind, message, frame), names in sorted(sites.items(), key=lambda x: -len(x[1])):
            print("  %4d %s at %s: %s  e.g. %s" % (len(names), kind, frame or "?", message, names[0]))

    # fsck over the store that received the variants (all of the small objects', the large one's length, encoding,
    # width and chunk fields): one process meets every variant.
    repo = os.path.join(work, "objects", "repo")
    env = git_env(work)
    kept = [k for k in outcome if size[k[0]] <= KEEP_ALL_LIMIT or (k[1] == "trailer" and 64 <= k[2] <= 74)]
    expected_corrupt = sum(1 for k in kept if outcome[k] != "identical")
    print()
    print("tessera fsck --unreachable over the store holding %d flipped objects (%d of them should be reported corrupt):"
          % (len(kept), expected_corrupt))
    def fsck():
        r = subprocess.run([tessera, "fsck", "--unreachable"], cwd=repo, env=env, capture_output=True, text=True,
                           errors="replace", timeout=3600)
        summary = [l for l in r.stdout.splitlines() if l.startswith("checked ")]
        corrupt = sum(1 for l in r.stdout.splitlines() if l.startswith("corrupt "))
        return r, (summary[-1] if summary else ""), corrupt
    r, summary, corrupt = fsck()
    if died(r.returncode, r.stderr):
        findings += 1
        message = next((l for l in r.stderr.splitlines() if "Fatal error" in l), r.stderr.strip().splitlines()[-1:] or [""])
        print("  FINDING: fsck crashed (exit %d): %s" % (r.returncode, "".join(message)[:300]))
        crashers = [k for k in kept if outcome[k] in ("crash", "hang", "oom")]
        store = os.path.join(repo, ".git", "tessera")
        for k in crashers:
            vid = hashlib.sha256(variant(by_id[k[0]], k[1], k[2], k[3])).hexdigest()
            p = os.path.join(store, "objects", vid[:2], vid[2:])
            if os.path.exists(p):
                os.remove(p)
        expected_corrupt -= len(crashers)
        r, summary, corrupt = fsck()
        print("  again without the %d variants that crash the decoder: exit %d%s; %s"
              % (len(crashers), r.returncode, " (CRASHED)" if died(r.returncode, r.stderr) else "", summary))
        if died(r.returncode, r.stderr):
            print("  " + "".join(l for l in r.stderr.splitlines() if "Fatal error" in l)[:300])
    else:
        print("  exit %d; %s" % (r.returncode, summary))
    if not died(r.returncode, r.stderr) and corrupt != expected_corrupt:
        findings += 1
        print("  FINDING: fsck reported %d corrupt objects, the sweep expects %d" % (corrupt, expected_corrupt))
    elif not died(r.returncode, r.stderr):
        print("  fsck reported exactly the %d corrupt variants, and exited non-zero: %s" % (corrupt, "yes" if r.returncode else "NO"))
        if r.returncode == 0 and corrupt:
            findings += 1

    # git checkout of a manifest that names a flipped object (the variant is in the store).
    print()
    print("git checkout of model.safetensors whose manifest names a flipped object:")
    files = os.path.join(work, "objects", "files")
    manifest = open(os.path.join(files, "v2.manifest")).read()
    original = open(os.path.join(files, "model-v2.safetensors"), "rb").read()
    cases = []
    for label, want in (("v1:norm.weight", "identical"), ("v1:norm.weight", "detected"), ("v2:embed.weight", "detected"),
                        ("v1:norm.weight", "crash"), ("v2:embed.weight", "crash")):
        obj = next((o for o in objs if o["label"] == label), None)
        if obj is None:
            continue
        picks = sorted(k for k in kept if k[0] == obj["id"] and outcome[k] == want)
        for region in ("trailer", "payload"):
            pick = next((k for k in picks if k[1] == region), None)
            if pick:
                cases.append((obj, pick, want))
    # And the length flips that once crashed the store (bit 71.7: >= 2^63; 68.3: 2^35 bytes), whatever their class now.
    for label, offset, bit in (("v1:norm.weight", 71, 7), ("v2:embed.weight", 71, 7), ("v2:embed.weight", 68, 3)):
        obj = next((o for o in objs if o["label"] == label), None)
        key = obj and (obj["id"], "trailer", offset, bit)
        if key in outcome and key in kept and not any(c[1] == key for c in cases):
            cases.append((obj, key, outcome[key]))
    def git(*args, check=True):
        return subprocess.run(["git"] + list(args), cwd=repo, env=env, capture_output=True, text=True, errors="replace", check=check)
    for obj, (oid, region, offset, bit), want in cases:
        data = variant(obj, region, offset, bit)
        vid = hashlib.sha256(data).hexdigest()
        stored = os.path.join(repo, ".git", "tessera", "objects", vid[:2], vid[2:])
        if not os.path.exists(stored):  # taken out for the second fsck run
            with open(stored, "wb") as f:
                f.write(data)
        line = next(l for l in manifest.splitlines() if obj["id"] in l)
        fields = line.split(" ")
        fields[-2], fields[-1] = vid, str(len(data))
        edited = manifest.replace(line, " ".join(fields))
        blob = subprocess.run(["git", "hash-object", "-w", "--no-filters", "--stdin"], cwd=repo, env=env, input=edited,
                              capture_output=True, text=True, check=True).stdout.strip()
        git("update-index", "--cacheinfo", "100644,%s,model.safetensors" % blob)
        os.remove(os.path.join(repo, "model.safetensors"))
        r = git("checkout", "--", "model.safetensors", check=False)
        path = os.path.join(repo, "model.safetensors")
        written = open(path, "rb").read() if os.path.exists(path) else None
        where = "%s %s %d.%d%s" % (obj["label"], region, offset, bit, " (%s)" % trailer_field(offset) if region == "trailer" else "")
        if died(r.returncode, r.stderr):
            verdict = "FINDING: the filter crashed: " + " / ".join(l for l in r.stderr.splitlines() if any(w in l for w in SIGNAL_WORDS))[:120]
            findings += 1
        elif want == "identical":
            ok = r.returncode == 0 and written == original
            verdict = "ok: checked out, byte-exact" if ok else "FINDING: exit %d, file %s" % (
                r.returncode, "missing" if written is None else "differs")
            findings += 0 if ok else 1
        elif written is not None and written != original:
            verdict = "FINDING: wrong bytes written (exit %d)" % r.returncode
            findings += 1
        elif r.returncode == 0:
            verdict = "FINDING: checkout succeeded" + (" with the original bytes" if written == original else "")
            findings += 1
        else:
            # A clean refusal says why, on a line of its own; a filter that fails silently is suspect.
            msg = next((l for l in r.stderr.splitlines() if l.startswith("tessera: ")), None)
            if msg is None:
                verdict = "FINDING: refused without a tessera error message: " + r.stderr.strip().replace("\n", " / ")[:160]
                findings += 1
            else:
                verdict = "ok: refused (exit %d): %s" % (r.returncode, msg[:150])
        print("  %-44s %-9s %s" % (where, want, verdict))
        git("reset", "-q", "--hard", "HEAD", check=False)
        if not os.path.exists(path) or open(path, "rb").read() != original:
            git("checkout", "--", "model.safetensors", check=False)
    print()
    print("findings: %d" % findings)
    return 1 if findings else 0


if __name__ == "__main__":
    if sys.argv[1] == "reproducer":
        reproducer(*sys.argv[2:9])
    elif sys.argv[1] == "report":
        sys.exit(report(sys.argv[2], sys.argv[3]))
    else:
        sys.exit(__doc__)
