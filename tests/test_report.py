"""The training report artifact: phase times by hand, and the markdown's parts."""
import base64
import re

import pytest

from flows.curves import write_curves
from flows.report import phase_times, report_markdown

ROWS = [{"step": 1, "timing_s/rollout": 1.0, "timing_s/update": 4.0, "timing_s/iteration": 6.0, "reward/mean": 0.2},
        {"step": 2, "timing_s/rollout": 3.0, "timing_s/update": 2.0, "timing_s/iteration": 6.0, "reward/mean": 0.4}]


def test_phase_times_are_means_per_step_with_their_share_of_the_step():
    # update: (4 + 2) / 2 = 3 s of 6 s; rollout: (1 + 3) / 2 = 2 s of 6 s
    assert phase_times(ROWS) == [("update", 3.0, 0.5), ("rollout", 2.0, pytest.approx(1 / 3))]


def test_the_report_has_the_result_settings_times_and_the_curves_inline(tmp_path):
    curves = str(tmp_path / "curves.png")
    write_curves(ROWS, curves)
    summary = {"steps": 2, "val_accuracy_before": 0.25, "val_accuracy_after": 0.5, "curves": curves,
               "final_policy": "/runs/x/final_policy"}
    config = {"run_name": "x", "trainer": {"steps": 2, "lr": 1e-4}, "algorithm": {"adv_estimator": "rloo"},
              "model": {"size": "tiny"}, "storage": {"uri": "s3://b/x"}}
    md = report_markdown(summary, config, ROWS)
    assert md.startswith("## siirl-train: x (2 steps)")
    assert "Held-out accuracy (greedy): **0.250 -> 0.500** (+25.0 points)." in md
    assert "| final_policy | /runs/x/final_policy |" in md  # the summary table, where things are
    assert "| algorithm | rloo |" in md and "| storage.uri | s3://b/x |" in md and "| lr | 0.0001 |" in md
    assert "| update | 3.000 | 50% |" in md and "| rollout | 2.000 | 33% |" in md
    inline = re.search(r"!\[training curves\]\(data:image/png;base64,([A-Za-z0-9+/=]+)\)", md)
    with open(curves, "rb") as f:
        assert inline and base64.b64decode(inline.group(1)) == f.read()


def test_a_run_without_timings_or_curves_leaves_those_parts_out():
    md = report_markdown({"steps": 1, "val_accuracy_before": 0.5, "val_accuracy_after": 0.25, "curves": ""},
                         {"run_name": "y"}, [{"step": 1}])
    assert "(-25.0 points)" in md and "Time per step" not in md and "Curves" not in md
