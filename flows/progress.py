"""Console output of a training run: a live progress bar and the closing summary."""
from __future__ import annotations

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

KEY_METRICS = (("reward/accuracy", "acc"), ("reward/mean", "reward"), ("actor/kl", "kl"),
               ("actor/entropy", "ent"), ("response/length_mean", "len"), ("timing_s/iteration", "s/it"))

console = Console(stderr=True)
# What the summary's accuracies measure: they differ in decoding and prompts, so a
# sampled training accuracy well below the greedy held-out one is expected.
SUMMARY_NOTES = {
    "val_accuracy_before": "greedy, held-out prompts, before training (eval_initial.json)",
    "val_accuracy_after": "greedy, held-out prompts, after the last step",
    "last_train_accuracy": "sampled at rollout.temperature, the last step's training prompts",
    "warm_start_steps": "supervised steps run (sft.steps caps them; sft.target_accuracy may stop them early)",
    "warm_start_accuracy": "greedy, held-out prompts, right after the warm start",
}


def progress_bar(total: int, completed: int) -> Progress:
    bar = Progress(TextColumn("[bold]siirl-train"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                   TextColumn("{task.description}"), console=console, transient=False)
    bar.add_task("", total=total, completed=completed)
    return bar


def describe(metrics: dict) -> str:
    return "  ".join(f"{short} {metrics[k]:.3f}" for k, short in KEY_METRICS if k in metrics)


def summary_table(summary: dict) -> Table:
    table = Table(title="siirl-train summary", show_header=False)
    for k, v in summary.items():
        table.add_row(k, f"{v:.3f}" if isinstance(v, float) else str(v), SUMMARY_NOTES.get(k, ""))
    return table


def summary_markdown(summary: dict) -> str:
    """The summary as a markdown table for Prefect's artifact, with what each accuracy measures."""
    rows = [f"| {k} | {v} | {SUMMARY_NOTES.get(k, '')} |" for k, v in summary.items()]
    return "\n".join(["| field | value | what |", "|---|---|---|", *rows])
