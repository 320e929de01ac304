"""How much each learning test's run learns, over several seeds: the spread behind the
margins the e2e tests assert (tests/e2e/learning_cases.py).

    .venv/bin/python bench/learning_spread.py [--cases default,ppo] [--seeds 0,1,2,3,4] [--out docs/learning]
    .venv/bin/python bench/learning_spread.py --report-only    # rewrite the .md from the .json

Each (case, seed) runs the case's `siirl` command as a user would, in its own run folder,
with `trainer.seed=SEED` (which changes the base model's initialisation, the warm start, the
prompts and the samples). Warm starts are made first, one per seed, and shared by every
case, as the test session shares them. Results merge into OUT.json (a rerun of some cases
replaces only their rows) and OUT.md is written from it.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
from tests.e2e.learning_cases import CASES  # noqa: E402


INTRO = """# How much the learning tests learn, over seeds

Every learning test in the suite runs one seed (`trainer.seed=0`) and asserts a margin
(tests/e2e/learning_cases.py). Floating-point results differ between CPU types (vector
widths, BLAS kernels), so the trajectory a seed follows on one machine is not the one it
follows on another; the margins are set from the spread over seeds below, which stands in
for that variation: each margin sits below the worst seed measured, with room (except
the default run's, see below).

`trainer.seed` changes the base model's initialisation, the warm start, the prompts and the
samples. Rerun (about an hour for all cases and five seeds on 2 cores):

    .venv/bin/python bench/learning_spread.py                       # every case, seeds 0-4
    .venv/bin/python bench/learning_spread.py --cases default --seeds 0,1,2

"gain" is held-out accuracy after minus before (greedy, exact match; for retraining the
promotion gate's candidate minus champion score); "after" is the held-out success rate at
the end, where the test asserts that instead (the multi-agent games start at chance).
Wall time is one run of the case's command, warm start excluded (made once per seed first,
as the test session shares it), except for data_files, whose warm start on the user's
files is part of its run.
"""


def cpu_name() -> str:
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def commit() -> str:
    out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True)
    dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT,
                           capture_output=True, text=True).stdout.strip()
    return out.stdout.strip() + ("+changes" if dirty else "")


def siirl(args: list[str], log_path: str) -> tuple[int, float]:
    env = dict(os.environ, PREFECT_SERVER_ANALYTICS_ENABLED="false")
    t0 = time.perf_counter()
    with open(log_path, "w") as log:
        rc = subprocess.run([sys.executable, "-m", "flows.cli", *args], cwd=ROOT, env=env, stdout=log,
                            stderr=subprocess.STDOUT).returncode
    return rc, time.perf_counter() - t0


def run_case(name: str, seed: int, work: str, cache_dir: str) -> dict:
    case = CASES[name]
    run_dir = os.path.join(work, f"{name}-s{seed}")
    rc, wall = siirl(case.command(run_dir, cache_dir, seed), run_dir + ".log")
    if rc != 0:
        print(f"  {name} seed {seed}: FAILED (rc {rc}), log {run_dir}.log", flush=True)
        return {"case": name, "seed": seed, "rc": rc, "wall_s": round(wall, 1)}
    before, after = case.scores(run_dir)
    row = {"case": name, "seed": seed, "rc": 0, "before": before, "after": after,
           "outcome": case.outcome(before, after), "wall_s": round(wall, 1)}
    print(f"  {name} seed {seed}: {before:.3f} -> {after:.3f} ({wall:.0f} s)", flush=True)
    return row


def merge(path: str, rows: list[dict], meta: dict) -> dict:
    data = {"runs": []}
    if os.path.exists(path):
        with open(path) as f:
            data = json.load(f)
    done = {(r["case"], r["seed"]) for r in rows}
    data["runs"] = [r for r in data["runs"] if (r["case"], r["seed"]) not in done] + rows
    if meta not in data.setdefault("measured", []):
        data["measured"].append(meta)
    with open(path, "w") as f:
        json.dump(data, f, indent=1)
    return data


def case_table(name: str, rows: list[dict]) -> list[str]:
    case = CASES[name]
    what = "after" if case.absolute else "gain"
    inputs = f" with the overrides of `{case.inputs.__name__}`" if case.inputs else ""
    lines = [f"### {name}", "", f"`siirl {' '.join(case.args)}`{inputs} ({case.iterations} iterations), asserted in "
             f"`{case.test}`: {what} >= {case.margin}", "",
             "| seed | before | after | gain | wall s | commit |", "|---|---|---|---|---|---|"]
    for r in sorted(rows, key=lambda r: r["seed"]):
        if r["rc"] != 0:
            lines.append(f"| {r['seed']} | failed (rc {r['rc']}) | | | {r['wall_s']} | {r.get('commit', '')} |")
            continue
        lines.append(f"| {r['seed']} | {r['before']:.3f} | {r['after']:.3f} | {r['after'] - r['before']:+.3f} | "
                     f"{r['wall_s']:.0f} | {r.get('commit', '')} |")
    return lines + [""]


def summary_row(name: str, rows: list[dict]) -> str:
    case = CASES[name]
    ok = [r["outcome"] for r in rows if r["rc"] == 0]
    failed = len(rows) - len(ok)
    worst = min(ok) if ok else float("nan")
    holds = sum(o >= case.margin for o in ok)
    what = "after" if case.absolute else "gain"
    walls = [r["wall_s"] for r in rows if r["rc"] == 0]
    sign = "" if case.absolute else "+"
    return (f"| {name} | {case.iterations} | {what} >= {case.margin} | {len(rows)} | {worst:{sign}.3f} | "
            f"{statistics.mean(ok) if ok else float('nan'):{sign}.3f} | {holds}/{len(rows)}"
            f"{f' ({failed} failed)' if failed else ''} | {statistics.median(walls) if walls else 0:.0f} |")


HAND_WRITTEN = "<!-- hand-written below: kept when the tables above are rewritten -->"


def kept_notes(path: str) -> str:
    if not os.path.exists(path):
        return HAND_WRITTEN + "\n"
    with open(path) as f:
        text = f.read()
    return text[text.index(HAND_WRITTEN):] if HAND_WRITTEN in text else HAND_WRITTEN + "\n"


def write_report(data: dict, path: str) -> None:
    by_case: dict[str, list[dict]] = {}
    for r in data["runs"]:
        by_case.setdefault(r["case"], []).append(r)
    names = [n for n in CASES if n in by_case]
    lines = ["<!-- written by bench/learning_spread.py from learning.json; edit INTRO there, not this file -->",
             INTRO, "## Summary", "",
             "| case | iterations | asserted | seeds | worst | mean | seeds that hold | median wall s |",
             "|---|---|---|---|---|---|---|---|"]
    lines += [summary_row(n, by_case[n]) for n in names] + [""]
    for n in names:
        lines += case_table(n, by_case[n])
    lines.append("Measured on: " + "; ".join(sorted({f"{m['cpu']}, {m['cores']} cores, {m['date']}"
                                                     for m in data.get("measured", [])})))
    notes = kept_notes(path)
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n\n" + notes)


def make_warm_starts(seeds: list[int], work: str, cache_dir: str) -> None:
    for seed in seeds:
        rc, wall = siirl(["sft", f"trainer.seed={seed}", f"storage.uri={work}/sft-s{seed}",
                          f"storage.cache_dir={cache_dir}"], os.path.join(work, f"sft-s{seed}.log"))
        if rc != 0:
            raise SystemExit(f"warm start for seed {seed} failed; see {work}/sft-s{seed}.log")
        print(f"warm start seed {seed}: {wall:.0f} s", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cases", default=",".join(CASES), help=f"comma-separated, of {', '.join(CASES)}")
    ap.add_argument("--seeds", default="0,1,2,3,4")
    ap.add_argument("--out", default=os.path.join(ROOT, "docs", "learning"),
                    help="OUT.json (merged) and OUT.md are written")
    ap.add_argument("--work", default="", help="run folders and logs (default: a temporary folder, kept)")
    ap.add_argument("--report-only", action="store_true")
    args = ap.parse_args()
    if args.report_only:
        with open(args.out + ".json") as f:
            write_report(json.load(f), args.out + ".md")
        return
    names = [n for n in args.cases.split(",") if n]
    unknown = sorted(set(names) - set(CASES))
    if unknown:
        raise SystemExit(f"unknown case(s) {unknown}; known: {', '.join(CASES)}")
    seeds = [int(s) for s in args.seeds.split(",")]
    work = args.work or tempfile.mkdtemp(prefix="siirl-learning-")
    os.makedirs(work, exist_ok=True)
    cache_dir = os.path.join(work, "cache")
    print(f"run folders and logs under {work}", flush=True)
    if any(CASES[n].warm_start for n in names):
        make_warm_starts(seeds, work, cache_dir)
    meta = {"cpu": cpu_name(), "cores": os.cpu_count(), "date": time.strftime("%Y-%m-%d"), "commit": commit()}
    for name in names:
        for seed in seeds:
            row = dict(run_case(name, seed, work, cache_dir), commit=meta["commit"])
            write_report(merge(args.out + ".json", [row], meta), args.out + ".md")


if __name__ == "__main__":
    main()
