"""The end-of-run report a training flow run leaves in the Prefect UI (markdown artifact
`siirl-train-summary`): how well it learned, the curves, the settings that tell runs
apart, where its checkpoints and policy are, and where the time went."""
from __future__ import annotations

import base64
import os

from flows.progress import summary_markdown
from flows.runs import key_settings


def phase_times(rows: list[dict]) -> list[tuple[str, float, float]]:
    """(phase, mean seconds per step, share of the iteration) for each timing_s/* metric,
    slowest first; the iteration itself is the total, not a phase."""
    totals: dict[str, list[float]] = {}
    for row in rows:
        for key, value in row.items():
            if key.startswith("timing_s/"):
                totals.setdefault(key[len("timing_s/"):], []).append(value)
    means = {phase: sum(v) / len(v) for phase, v in totals.items()}
    iteration = means.pop("iteration", None)
    return sorted(((p, m, m / iteration if iteration else float("nan")) for p, m in means.items()),
                  key=lambda item: -item[1])


def _embedded_png(path: str) -> str:
    """The image inline (a data URI), so the UI shows it without access to the run folder."""
    with open(path, "rb") as f:
        return "data:image/png;base64," + base64.b64encode(f.read()).decode("ascii")


def report_markdown(summary: dict, config: dict, rows: list[dict]) -> str:
    before, after = summary["val_accuracy_before"], summary["val_accuracy_after"]
    lines = [f"## siirl-train: {config.get('run_name', '')} ({summary['steps']} steps)", "",
             f"Held-out accuracy (greedy): **{before:.3f} -> {after:.3f}** ({100 * (after - before):+.1f} points).",
             "", summary_markdown(summary), "", "### Settings", "", "| key | value |", "|---|---|"]
    lines += [f"| {k} | {v} |" for k, v in key_settings(config).items()]
    times = phase_times(rows)
    if times:
        lines += ["", "### Time per step", "", "| phase | mean s | share of the step |", "|---|---|---|"]
        lines += [f"| {phase} | {mean:.3f} | {share:.0%} |" for phase, mean, share in times]
    curves = summary.get("curves") or ""
    if curves and os.path.exists(curves):
        lines += ["", "### Curves", "", f"![training curves]({_embedded_png(curves)})", "", f"`{curves}`"]
    return "\n".join(lines)
