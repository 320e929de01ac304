"""curves.png: each logged metric's series is drawn with all its points; held-out
accuracy joins the evaluations the log does not hold (before training, the final one)."""
import matplotlib.image

from flows.curves import series, write_curves

ROWS = [{"step": s, "reward/mean": 0.1 * s, "reward/accuracy": 0.1 * s, "actor/entropy": 1.0 / s,
         "response/length_mean": 4.0, "timing_s/iteration": 0.5} for s in (1, 2, 3, 4)]
ROWS[1]["val/accuracy"] = 0.5
ROWS[3]["val/accuracy"] = 0.7


def test_series_keeps_the_steps_that_log_the_metric():
    assert series(ROWS, "val/accuracy") == ([2, 4], [0.5, 0.7])
    assert series(ROWS, "actor/kl") == ([], [])


def test_curves_draw_every_logged_series_and_the_extra_evaluations(tmp_path):
    path = str(tmp_path / "curves.png")
    # Step 4 is in the log: the log's value is kept, the extra one at that step is not added twice.
    drawn = write_curves(ROWS, path, extra_val=((0, 0.3), (4, 0.9)))
    assert drawn == {"reward/mean": 4, "reward/accuracy": 4, "val/accuracy": 3, "actor/entropy": 4,
                     "response/length_mean": 4, "timing_s/iteration": 4}  # no KL: this run logs none
    image = matplotlib.image.imread(path)
    assert image.shape[:2] == (7 * 80, 13 * 80)  # figsize x dpi
    assert sorted(p.name for p in tmp_path.iterdir()) == ["curves.png"]
