"""`siirl runs`: the runs under a folder, one run, or two runs side by side, read from
what each run writes in its run folder (config.json, metrics.jsonl, eval_initial.json,
summary.json, run.lock.json) and from its checkpoint storage. Reads only: nothing in a
run folder is changed, except that `show` draws a missing curves.png of a run that has
ended.

    siirl runs [FOLDER]                       every run under FOLDER (default: runs)
    siirl runs show RUN [FOLDER]              one run: summary, key settings, curves.png
    siirl runs compare A B [FOLDER] [--out F] final metrics side by side, a combined plot
"""
from __future__ import annotations

import json
import os
import posixpath
import sys

from rich.console import Console
from rich.table import Table

USAGE = ("usage: siirl runs [FOLDER] | siirl runs show RUN [FOLDER] | "
         "siirl runs compare RUN_A RUN_B [FOLDER] [--out FILE.png]")
# Final metrics `compare` puts side by side: (key, label).
COMPARED = (("val_accuracy_before", "held-out accuracy before (greedy)"),
            ("val_accuracy_after", "held-out accuracy after (greedy)"),
            ("reward/mean", "reward, last step"), ("reward/accuracy", "train accuracy, last step (sampled)"),
            ("actor/entropy", "entropy, last step"), ("response/length_mean", "response length, last step"),
            ("actor/kl", "KL to reference, last step"), ("seconds_per_step", "seconds per step (mean)"))


class RunNotFound(ValueError):
    """A run name or folder that holds no siirl run."""


def _read_json(path: str) -> dict | None:
    try:
        with open(path) as f:
            return json.load(f)
    except FileNotFoundError:
        return None


def metrics_rows(run_dir: str) -> list[dict]:
    """metrics.jsonl's rows, one per step (the last, should a step appear twice)."""
    from siirl_core.metrics import read_metrics

    by_step = {row["step"]: row for row in read_metrics(run_dir)}
    return [by_step[s] for s in sorted(by_step)]


def is_run_dir(path: str) -> bool:
    return os.path.isfile(os.path.join(path, "config.json"))


def run_dirs(root: str) -> list[str]:
    """The run folders directly under `root`, by name."""
    if not os.path.isdir(root):
        raise RunNotFound(f"{root}: no such folder (siirl runs FOLDER lists the runs in FOLDER; default runs)")
    found = [os.path.join(root, n) for n in sorted(os.listdir(root))]
    return [d for d in found if os.path.isdir(d) and is_run_dir(d)]


def find_run(name: str, root: str) -> str:
    """A run folder given by path or by name under `root`."""
    for candidate in (name, os.path.join(root, name)):
        if is_run_dir(candidate):
            return candidate
    known = [os.path.basename(d) for d in run_dirs(root)] if os.path.isdir(root) else []
    raise RunNotFound(f"no run {name!r} (a folder with config.json) as a path or in {root}; runs there: "
                      f"{', '.join(known) or 'none'}")


def status(run_dir: str) -> str:
    """running (a live process holds its lock), completed (it wrote its summary), or
    stopped (it ended without one: killed, crashed or failed; the same command resumes)."""
    from flows.run_lock import RunFolderBusy, holder, is_live

    try:
        lock = holder(run_dir)
    except RunFolderBusy:
        return "unknown (unreadable run.lock.json)"
    if lock is not None and is_live(lock):
        return "running"
    return "completed" if os.path.isfile(os.path.join(run_dir, "summary.json")) else "stopped"


def last_checkpoint(checkpoint_root: str, endpoint_url: str = "") -> str:
    """The newest checkpoint folder with a manifest (a save that finished), as
    `step N`; sizes and checksums are checked when a run resumes, not here."""
    from siirl_core import checkpoint as ckpt
    from siirl_core.storage import filesystem

    try:
        for step, folder in reversed(ckpt.step_folders(checkpoint_root, endpoint_url)):
            fs, path = filesystem(folder, endpoint_url)
            if fs.exists(posixpath.join(path, ckpt.MANIFEST)):
                return f"step {step}"
    except OSError as err:  # a storage fault is shown in the listing, which goes on
        return f"? ({type(err).__name__})"
    return "none"


def describe_run(run_dir: str) -> dict:
    """What an operator asks of a run first, read from its folder."""
    config = _read_json(os.path.join(run_dir, "config.json")) or {}
    summary = _read_json(os.path.join(run_dir, "summary.json")) or {}
    initial = _read_json(os.path.join(run_dir, "eval_initial.json")) or {}
    rows = metrics_rows(run_dir)
    storage = config.get("storage", {})
    logged_val = [r["val/accuracy"] for r in rows if "val/accuracy" in r and r["step"] > 0]  # 0: before training
    return {
        "name": os.path.basename(os.path.normpath(run_dir)), "run_dir": run_dir, "status": status(run_dir),
        "step": rows[-1]["step"] if rows else 0, "steps": config.get("trainer", {}).get("steps"),
        "val_accuracy_before": summary.get("val_accuracy_before", initial.get("val/accuracy")),
        "val_accuracy_after": summary.get("val_accuracy_after", logged_val[-1] if logged_val else None),
        "last_checkpoint": last_checkpoint(storage.get("uri") or run_dir, storage.get("endpoint_url", "")),
        "flow_run": summary.get("flow_run", ""), "rows": rows, "config": config, "summary": summary,
    }


def _fmt(value) -> str:
    if value is None:
        return "-"
    return f"{value:.3f}" if isinstance(value, float) else str(value)


def list_table(runs: list[dict], root: str) -> Table:
    table = Table(title=f"siirl runs in {root}")
    for column in ("run", "status", "step", "held-out acc before", "after", "last checkpoint", "flow run"):
        table.add_column(column)
    for r in runs:
        table.add_row(r["name"], r["status"], f"{r['step']}/{_fmt(r['steps'])}", _fmt(r["val_accuracy_before"]),
                      _fmt(r["val_accuracy_after"]), r["last_checkpoint"], r["flow_run"] or "-")
    return table


def key_settings(config: dict) -> dict:
    """The resolved config's choices that tell runs apart."""
    model, trainer, algorithm = config.get("model", {}), config.get("trainer", {}), config.get("algorithm", {})
    return {"model": model.get("path") or model.get("size"), "algorithm": algorithm.get("adv_estimator"),
            "steps": trainer.get("steps"), "prompts_per_step": trainer.get("prompts_per_step"),
            "rollout.n": config.get("rollout", {}).get("n"), "lr": trainer.get("lr"),
            "kl_coef": algorithm.get("kl_coef"), "seed": trainer.get("seed"),
            "storage.uri": config.get("storage", {}).get("uri")}


def final_metrics(run: dict) -> dict:
    """The values `compare` shows: the held-out accuracies and the last step's metrics."""
    rows, last = run["rows"], (run["rows"][-1] if run["rows"] else {})
    times = [r["timing_s/iteration"] for r in rows if "timing_s/iteration" in r]
    values = {"val_accuracy_before": run["val_accuracy_before"], "val_accuracy_after": run["val_accuracy_after"],
              "seconds_per_step": sum(times) / len(times) if times else None}
    values.update({k: last.get(k) for k, _ in COMPARED if k not in values})
    return values


def show(run: dict, console: Console) -> None:
    from flows.progress import SUMMARY_NOTES

    table = Table(title=f"run {run['name']} ({run['status']}, step {run['step']}/{_fmt(run['steps'])})",
                  show_header=False)
    fields = {"run_dir": run["run_dir"], "last_checkpoint": run["last_checkpoint"],
              "val_accuracy_before": run["val_accuracy_before"], "val_accuracy_after": run["val_accuracy_after"],
              **{k: v for k, v in run["summary"].items() if k not in ("run_dir",)}}
    for k, v in fields.items():
        table.add_row(k, _fmt(v), SUMMARY_NOTES.get(k, ""))
    console.print(table)
    settings = Table(title="key settings", show_header=False)
    for k, v in key_settings(run["config"]).items():
        settings.add_row(k, "-" if v is None else str(v))
    console.print(settings)
    console.print(f"curves: {curves_of(run)}")


def curves_of(run: dict) -> str:
    """The run's curves.png, drawn from its metrics when a run that has ended has none."""
    path = os.path.join(run["run_dir"], "curves.png")
    if not os.path.exists(path) and run["status"] != "running" and run["rows"]:
        from flows.curves import write_curves

        before = run["val_accuracy_before"]
        write_curves(run["rows"], path, extra_val=((0, before),) if before is not None else ())
    return path if os.path.exists(path) else "none (no metrics yet)"


def compare(a: dict, b: dict, out: str, console: Console) -> None:
    table = Table(title=f"{a['name']} vs {b['name']}")
    for column in ("metric", a["name"], b["name"], "difference (B - A)"):
        table.add_column(column)
    fa, fb = final_metrics(a), final_metrics(b)
    for key, label in COMPARED:
        diff = fb[key] - fa[key] if isinstance(fa[key], float) and isinstance(fb[key], float) else None
        table.add_row(label, _fmt(fa[key]), _fmt(fb[key]), _fmt(diff))
    console.print(table)
    console.print(f"plot: {compare_plot([a, b], out)}")


def held_out_points(run: dict) -> dict[int, float]:
    """step -> held-out accuracy: before training (step 0), each logged evaluation, and
    the final one at the last step when the log has none there."""
    points = {r["step"]: r["val/accuracy"] for r in run["rows"] if "val/accuracy" in r}
    if run["val_accuracy_before"] is not None:
        points.setdefault(0, run["val_accuracy_before"])
    if run["status"] == "completed" and run["val_accuracy_after"] is not None:
        points.setdefault(run["step"], run["val_accuracy_after"])
    return points


def compare_plot(runs: list[dict], out: str) -> str:
    """Reward and held-out accuracy of each run against step, in one PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from flows.curves import series

    fig, (reward, accuracy) = plt.subplots(1, 2, figsize=(11, 4), constrained_layout=True)
    for run in runs:
        reward.plot(*series(run["rows"], "reward/mean"), label=run["name"])
        points = held_out_points(run)
        accuracy.plot(sorted(points), [points[s] for s in sorted(points)], "o-", label=run["name"])
    for ax, title in ((reward, "reward (mean)"), (accuracy, "held-out accuracy (greedy)")):
        ax.set_title(title)
        ax.set_xlabel("step")
        ax.legend()
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    fig.savefig(out, dpi=80)
    plt.close(fig)
    return out


def main(args: list[str]) -> int:
    # Piped or captured output gets whole values, not columns cut to 80 characters.
    console = Console(width=None if sys.stdout.isatty() else 200)
    out = "siirl-compare.png"
    if "--out" in args:
        i = args.index("--out")
        if i + 1 >= len(args):
            print(f"siirl runs: --out needs a file name\n{USAGE}", file=sys.stderr)
            return 2
        out, args = args[i + 1], args[:i] + args[i + 2:]
    try:
        if args[:1] == ["show"] and len(args) in (2, 3):
            root = args[2] if len(args) == 3 else "runs"
            show(describe_run(find_run(args[1], root)), console)
        elif args[:1] == ["compare"] and len(args) in (3, 4):
            root = args[3] if len(args) == 4 else "runs"
            compare(describe_run(find_run(args[1], root)), describe_run(find_run(args[2], root)), out, console)
        elif len(args) <= 1 and args[:1] not in (["show"], ["compare"]):
            root = args[0] if args else "runs"
            console.print(list_table([describe_run(d) for d in run_dirs(root)], root))
        else:
            print(USAGE, file=sys.stderr)
            return 2
    except RunNotFound as err:
        print(f"siirl runs: {err}", file=sys.stderr)
        return 2
    return 0
