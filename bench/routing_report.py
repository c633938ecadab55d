#!/usr/bin/env python3
"""Table, chart and findings of bench/routing_experiment.sh, from `tessera eval --json` outputs (standard library only).

    python3 bench/routing_report.py RESULTS.json... --chart routing.svg --out results.json --commit REV --heldout TASK \
        HELD_IN_TASK...

Per task the primary metric: acc (multiple choice), rougeL (generation), nll (perplexity; lower is better). Columns are
the checkouts in the order they appear. Findings compare methods task by task: a difference counts when it exceeds two
standard errors of the difference (√(SE₁² + SE₂²), the examples' SEs as independent: conservative for paired runs);
perplexity tasks have no per-example SE here and are reported by sign only.
"""
import argparse
import json
import math
import sys

PRIMARY = ("acc", "rougeL", "nll")
LOWER_BETTER = {"nll"}
SHORT = {"smollm2": "base", "HEAD:routers/oracle": "oracle", "HEAD:routers/uniform": "uniform", "HEAD:routers/arrow": "arrow",
         "HEAD:routers/phatgoose": "phatgoose", "HEAD:routers/glider": "glider", "HEAD:routers/mbc-arrow": "mbc-arrow",
         "HEAD:routers/mbc-uniform": "mbc-uniform", "smollm2 + HEAD:merges/ties": "ties"}


def load(paths):
    rows = []
    for p in paths:
        rows += json.load(open(p))["results"]
    return rows


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("results", nargs="+")
    ap.add_argument("--chart")
    ap.add_argument("--out")
    ap.add_argument("--commit", default="")
    ap.add_argument("--heldout", default="arc-easy")
    args, held_in = ap.parse_known_args()
    results_files = [r for r in args.results if r.endswith(".json")]
    held_in = [r for r in args.results if not r.endswith(".json")] + held_in
    rows = load(results_files)
    methods, tasks, table = [], [], {}
    for r in rows:
        task = r["task"].split(":")[0]
        m = SHORT.get(r["revision"], r["revision"])
        if m not in methods:
            methods.append(m)
        if task not in tasks:
            tasks.append(task)
        key = (task, m)
        if r["metric"] in PRIMARY:
            current = table.get(key)
            if current is None or PRIMARY.index(r["metric"]) < PRIMARY.index(current["metric"]):
                table[key] = {"metric": r["metric"], "value": r["value"], "stderr": r.get("stderr"), "count": r.get("count")}
    order = [t for t in held_in if t in tasks] + [t for t in tasks if t not in held_in]
    width = 16
    print(f"{'task':16s} {'metric':7s} " + " ".join(f"{m:>{width}s}" for m in methods))
    for t in order:
        cells = []
        metric = next((table[(t, m)]["metric"] for m in methods if (t, m) in table), "")
        for m in methods:
            c = table.get((t, m))
            if c is None:
                cells.append(f"{'-':>{width}s}")
            elif c["stderr"]:
                cells.append(f"{c['value']:.3f} ± {c['stderr']:.3f}".rjust(width))
            else:
                cells.append(f"{c['value']:.3f}".rjust(width))
        label = t + (" (held out)" if t == args.heldout else "")
        print(f"{label:16s} {metric:7s} " + " ".join(cells))

    def compare(a, b, task):
        x, y = table.get((task, a)), table.get((task, b))
        if not x or not y:
            return None
        sign = -1 if x["metric"] in LOWER_BETTER else 1
        diff = sign * (x["value"] - y["value"])
        se = math.sqrt((x["stderr"] or 0) ** 2 + (y["stderr"] or 0) ** 2)
        return diff, se

    def verdict(a, b, tasks_):
        wins = losses = ties = 0
        parts = []
        for t in tasks_:
            c = compare(a, b, t)
            if c is None:
                continue
            diff, se = c
            if se > 0 and diff > 2 * se:
                wins += 1; tag = ">"
            elif se > 0 and diff < -2 * se:
                losses += 1; tag = "<"
            elif se == 0:
                tag = ">" if diff > 0 else "<" if diff < 0 else "="
                wins += diff > 0; losses += diff < 0; ties += diff == 0
            else:
                ties += 1; tag = "≈"
            parts.append(f"{t} {tag} ({diff:+.3f}, 2·SE {2 * se:.3f})")
        return wins, losses, ties, parts

    findings = []
    held = [t for t in order if t != args.heldout]
    for a, b, claim in [("oracle", "arrow", "oracle ≥ Arrow on held-in tasks"), ("arrow", "uniform", "Arrow > uniform on held-in tasks"),
                        ("oracle", "uniform", "oracle > uniform on held-in tasks"), ("phatgoose", "uniform", "PhatGOOSE > uniform on held-in tasks"),
                        ("glider", "phatgoose", "Glider ≥ PhatGOOSE on held-in tasks"), ("arrow", "base", "Arrow > base on held-in tasks")]:
        if a in methods and b in methods:
            w, l, t_, parts = verdict(a, b, held)
            findings.append({"claim": claim, "a": a, "b": b, "wins": w, "losses": l, "ties": t_, "per_task": parts})
    for m in methods:
        if m != "base":
            c = compare(m, "base", args.heldout)
            if c:
                diff, se = c
                findings.append({"claim": f"{m} vs base on {args.heldout} (held out)", "diff": diff, "two_se": 2 * se,
                                 "verdict": "better" if diff > 2 * se else "worse" if diff < -2 * se else "within 2·SE"})
    print()
    for f in findings:
        if "per_task" in f:
            print(f"{f['claim']}: {f['wins']} tasks better, {f['losses']} worse, {f['ties']} within 2·SE: " + "; ".join(f["per_task"]))
        else:
            print(f"{f['claim']}: {f['diff']:+.4f} (2·SE {f['two_se']:.4f}): {f['verdict']}")

    if args.out:
        json.dump({"commit": args.commit, "methods": methods, "tasks": order,
                   "table": [{"task": t, "method": m, **table[(t, m)]} for t in order for m in methods if (t, m) in table],
                   "findings": findings}, open(args.out, "w"), indent=1)
    if args.chart:
        write_chart(args.chart, order, methods, table, args.heldout, args.commit)
        print(f"chart: {args.chart}")


def write_chart(path, tasks, methods, table, heldout, commit):
    """One SVG: a panel per task, a bar per method (its primary metric; nll panels say lower is better), error bars of
    one SE."""
    colours = ["#888888", "#1b9e77", "#d95f02", "#7570b3", "#e7298a", "#66a61e", "#e6ab02", "#a6761d", "#666666", "#1f78b4"]
    panel_w, panel_h, top, left = 300, 190, 60, 20
    cols = 3
    rows = (len(tasks) + cols - 1) // cols
    w, h = left + cols * panel_w + 20, top + rows * panel_h + 70
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" font-family="sans-serif" font-size="11">',
           f'<rect width="{w}" height="{h}" fill="white"/>',
           f'<text x="{left}" y="22" font-size="15">Routed checkouts of one expert library on SmolLM2-135M (commit {commit})</text>',
           f'<text x="{left}" y="40" fill="#555">primary metric per task, ±1 SE; each column a committed checkout</text>']
    for i, t in enumerate(tasks):
        px, py = left + (i % cols) * panel_w, top + (i // cols) * panel_h
        cells = [(m, table.get((t, m))) for m in methods]
        values = [c["value"] for _, c in cells if c]
        if not values:
            continue
        metric = next(c["metric"] for _, c in cells if c)
        lo = min(0.0, min(values)) if metric != "nll" else min(values) * 0.95
        hi = max(values) * 1.1 if metric != "nll" else max(values) * 1.02
        hi = hi if hi > lo else lo + 1
        bw = (panel_w - 40) / len(methods)
        title = f"{t}{' (held out)' if t == heldout else ''}: {metric}{' (lower is better)' if metric == 'nll' else ''}"
        out.append(f'<text x="{px}" y="{py + 12}" font-size="12">{title}</text>')
        base_y = py + panel_h - 40
        scale = (panel_h - 70) / (hi - lo)
        for j, (m, c) in enumerate(cells):
            if not c:
                continue
            x = px + j * bw
            y = base_y - (c["value"] - lo) * scale
            out.append(f'<rect x="{x:.1f}" y="{y:.1f}" width="{bw - 3:.1f}" height="{base_y - y:.1f}" fill="{colours[j % len(colours)]}"/>')
            if c.get("stderr"):
                e = c["stderr"] * scale
                cx = x + (bw - 3) / 2
                out.append(f'<line x1="{cx:.1f}" x2="{cx:.1f}" y1="{y - e:.1f}" y2="{y + e:.1f}" stroke="black"/>')
            out.append(f'<text x="{x + (bw - 3) / 2:.1f}" y="{y - 3:.1f}" font-size="8" text-anchor="middle">{c["value"]:.2f}</text>')
        out.append(f'<line x1="{px}" x2="{px + panel_w - 40}" y1="{base_y}" y2="{base_y}" stroke="#333"/>')
    ly = top + rows * panel_h + 10
    for j, m in enumerate(methods):
        out.append(f'<rect x="{left + j * 100}" y="{ly}" width="12" height="12" fill="{colours[j % len(colours)]}"/>')
        out.append(f'<text x="{left + j * 100 + 16}" y="{ly + 10}">{m}</text>')
    out.append("</svg>")
    open(path, "w").write("\n".join(out) + "\n")


if __name__ == "__main__":
    sys.exit(main())
