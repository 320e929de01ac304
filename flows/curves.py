"""`curves.png` in the run folder: the training curves an operator looks at first,
drawn from metrics.jsonl with matplotlib (no TensorBoard needed)."""
from __future__ import annotations

import os

# (metric, panel title); val/accuracy is drawn on the accuracy panel beside the sampled one.
PANELS = (("reward/mean", "reward (mean)"), ("reward/accuracy", "accuracy"), ("actor/entropy", "entropy"),
          ("response/length_mean", "response length (tokens)"), ("actor/kl", "KL to reference"),
          ("timing_s/iteration", "seconds per step"))


def series(rows: list[dict], key: str) -> tuple[list[int], list[float]]:
    """(steps, values) of one metric over the rows that have it."""
    points = [(r["step"], r[key]) for r in rows if key in r]
    return [p[0] for p in points], [p[1] for p in points]


def write_curves(rows: list[dict], path: str, extra_val: tuple[tuple[int, float], ...] = ()) -> dict[str, int]:
    """Draw the panels from metrics rows (dicts with `step`) into a PNG at `path`, with
    `extra_val`: (step, held-out accuracy) of evaluations the log does not hold (before
    training, the final one) at steps it has no evaluation for. Returns how many points
    each drawn series has (a metric the run does not log is left out, its panel says so)."""
    import matplotlib

    matplotlib.use("Agg")  # files only: no display on a training machine
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 3, figsize=(13, 7), constrained_layout=True)
    drawn: dict[str, int] = {}
    for ax, (key, title) in zip(axes.flat, PANELS):
        steps, values = series(rows, key)
        ax.set_title(title)
        ax.set_xlabel("step")
        if steps:
            ax.plot(steps, values, label="train (sampled)" if key == "reward/accuracy" else None)
            drawn[key] = len(steps)
        if key == "reward/accuracy":
            logged = dict(zip(*series(rows, "val/accuracy")))
            points = sorted({**{s: v for s, v in extra_val if s not in logged}, **logged}.items())
            val_steps, val = [p[0] for p in points], [p[1] for p in points]
            if val_steps:
                ax.plot(val_steps, val, "o-", label="held-out (greedy)")
                drawn["val/accuracy"] = len(val_steps)
            if ax.get_legend_handles_labels()[0]:  # a run with no accuracy logged has nothing to label
                ax.legend(loc="lower right")
        if not steps:
            ax.text(0.5, 0.5, f"{key}\nnot logged by this run", ha="center", va="center", transform=ax.transAxes)
    tmp = path + ".tmp.png"
    fig.savefig(tmp, dpi=80)
    plt.close(fig)
    os.replace(tmp, path)  # a reader never sees half an image
    return drawn
