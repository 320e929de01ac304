"""`siirl runs`: every run under a folder with its status, progress, held-out accuracy
and newest checkpoint; one run shown; two compared. The run folders here are written
by hand the way a run writes them; tests/e2e/test_resume.py reads a real run's folder."""
import json
import os
import re
import subprocess

import pytest

from flows.cli import main
from tests.test_run_lock import write_lock


def make_run(root, name: str, steps: int, rows: list[dict], summary: dict | None = None, initial: float | None = None,
             checkpoints: dict[int, bool] | None = None) -> str:
    """A run folder: config.json, metrics.jsonl from `rows`, and optionally
    eval_initial.json, summary.json and checkpoints {step: has manifest}."""
    run_dir = os.path.join(root, name)
    os.makedirs(run_dir)
    with open(os.path.join(run_dir, "config.json"), "w") as f:
        json.dump({"run_name": name, "trainer": {"steps": steps, "lr": 1e-4, "seed": 3},
                   "storage": {"uri": run_dir, "endpoint_url": ""}, "model": {"size": "tiny"},
                   "algorithm": {"adv_estimator": "grpo"}}, f)
    with open(os.path.join(run_dir, "metrics.jsonl"), "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in rows)
    if initial is not None:
        with open(os.path.join(run_dir, "eval_initial.json"), "w") as f:
            json.dump({"val/accuracy": initial}, f)
    if summary is not None:
        with open(os.path.join(run_dir, "summary.json"), "w") as f:
            json.dump(summary, f)
    for step, complete in (checkpoints or {}).items():
        folder = os.path.join(run_dir, "checkpoints", f"step_{step:08d}")
        os.makedirs(folder)
        if complete:
            open(os.path.join(folder, "manifest.json"), "w").write("{}")
    return run_dir


def rows(n: int, reward: float = 0.5, seconds: float = 1.0, **extra) -> list[dict]:
    return [{"step": s, "reward/mean": reward, "timing_s/iteration": seconds, **extra} for s in range(1, n + 1)]


@pytest.fixture
def runs_root(tmp_path):
    root = str(tmp_path / "runs")
    # A completed run; step 3 is in the log twice (a resume replayed it): counted once.
    make_run(root, "done", 4, rows(4)[:3] + rows(4)[2:], initial=0.25,
             summary={"val_accuracy_before": 0.25, "val_accuracy_after": 0.5, "flow_run": "calm-owl"},
             checkpoints={2: True, 4: False})
    live = make_run(root, "live", 10, rows(2), initial=0.3, checkpoints={2: True})
    write_lock(live, os.getpid())
    # Its log opens with the evaluation before training (step 0), which is not "after".
    dead = make_run(root, "dead", 8, [{"step": 0, "val/accuracy": 0.2}] + rows(3) +
                    [{"step": 4, "val/accuracy": 0.4, "reward/mean": 0.6}], initial=0.2)
    make_run(root, "fresh", 8, [{"step": 0, "val/accuracy": 0.2}], initial=0.2)
    gone = subprocess.Popen(["true"])
    gone.wait()
    write_lock(dead, gone.pid)
    os.makedirs(os.path.join(root, "_cache"))  # not a run
    return root


def output_rows(text: str) -> dict[str, list[str]]:
    """The table's rows by run name, cells stripped."""
    found = {}
    for line in text.splitlines():
        cells = [c.strip() for c in re.split(r"[│┃]", line)[1:-1]]
        if cells and cells[0] and cells[0] not in ("run",):
            found[cells[0]] = cells
    return found


def test_the_list_shows_each_run_with_status_progress_accuracy_and_checkpoint(runs_root, capsys):
    assert main(["runs", runs_root]) == 0
    table = output_rows(capsys.readouterr().out)
    assert sorted(table) == ["dead", "done", "fresh", "live"]
    assert table["fresh"] == ["fresh", "stopped", "0/8", "0.200", "-", "none", "-"]
    assert table["done"] == ["done", "completed", "4/4", "0.250", "0.500", "step 2", "calm-owl"]
    assert table["live"] == ["live", "running", "2/10", "0.300", "-", "step 2", "-"]
    # Ended without a summary (its process is gone): its last logged evaluation is "after".
    assert table["dead"] == ["dead", "stopped", "4/8", "0.200", "0.400", "none", "-"]


def test_show_gives_the_summary_settings_and_draws_the_curves_of_an_ended_run(runs_root, capsys):
    assert main(["runs", "show", "done", runs_root]) == 0
    out = capsys.readouterr().out
    assert "run done (completed, step 4/4)" in out
    assert re.search(r"val_accuracy_after\s*│\s*0\.500\s*│\s*greedy, held-out prompts, after the last step", out)
    assert re.search(r"algorithm\s*│\s*grpo", out) and re.search(r"lr\s*│\s*0\.0001", out)
    curves = os.path.join(runs_root, "done", "curves.png")
    assert f"curves: {curves}" in out
    with open(curves, "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    # A running run's folder is not written to.
    assert main(["runs", "show", "live", runs_root]) == 0
    assert "curves: none" in capsys.readouterr().out
    assert not os.path.exists(os.path.join(runs_root, "live", "curves.png"))


def test_compare_puts_final_metrics_side_by_side_with_a_plot(runs_root, tmp_path, capsys):
    make_run(runs_root, "other", 4, rows(4, reward=0.75, seconds=3.0, **{"actor/entropy": 0.5}), initial=0.25,
             summary={"val_accuracy_before": 0.25, "val_accuracy_after": 0.625})
    out_png = str(tmp_path / "plots" / "cmp.png")
    assert main(["runs", "compare", "done", "other", runs_root, "--out", out_png]) == 0
    table = output_rows(capsys.readouterr().out)
    assert table["held-out accuracy after (greedy)"][1:] == ["0.500", "0.625", "0.125"]
    assert table["reward, last step"][1:] == ["0.500", "0.750", "0.250"]
    assert table["seconds per step (mean)"][1:] == ["1.000", "3.000", "2.000"]
    assert table["entropy, last step"][1:] == ["-", "0.500", "-"]
    with open(out_png, "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"


def test_an_unknown_run_or_folder_is_a_clear_error(runs_root, tmp_path, capsys):
    assert main(["runs", "show", "nope", runs_root]) == 2
    assert f"no run 'nope' (a folder with config.json) as a path or in {runs_root}; runs there: dead, done, fresh, live" \
        in capsys.readouterr().err
    assert main(["runs", str(tmp_path / "missing")]) == 2
    assert "missing: no such folder" in capsys.readouterr().err
    assert main(["runs", "compare", "done"]) == 2
    assert "usage: siirl runs" in capsys.readouterr().err
