"""The champion pointer, the decision history, and retention that keeps promoted checkpoints."""
from siirl_core import champion
from siirl_core import checkpoint as ckpt
from tests.test_checkpoint import _fake_checkpoint


def _decision(folder: str, step: int, score: float, promoted: bool) -> dict:
    return {"date": "2026-11-26", "decided_at": f"2026-11-26T03:00:0{step}", "promoted": promoted,
            "champion": {"folder": "", "step": 0, "score": 0.3},
            "candidate": {"folder": folder, "step": step, "score": score}}


def _record_two_nights(root: str, endpoint: str = "") -> tuple[str, str]:
    good, bad = ckpt.step_dir(root + "/candidates/a", 20), ckpt.step_dir(root + "/candidates/b", 40)
    assert champion.read_champion(root, endpoint) is None and champion.read_history(root, endpoint) == []
    champion.record_decision(root, _decision(good, 20, 0.5, promoted=True), endpoint)
    champion.record_decision(root, _decision(bad, 40, 0.1, promoted=False), endpoint)
    return good, bad


def test_promotion_moves_the_pointer_and_rejection_does_not(tmp_path):
    root = str(tmp_path)
    good, bad = _record_two_nights(root)
    current = champion.read_champion(root)
    assert current["folder"] == good and current["score"] == 0.5 and current["date"] == "2026-11-26"
    assert [d["promoted"] for d in champion.read_history(root)] == [True, False]
    assert champion.is_promoted(good) and not champion.is_promoted(bad)


def test_pointer_and_history_on_s3(s3_server):
    root, ep = "s3://siirl/champion", s3_server["endpoint"]
    good, bad = _record_two_nights(root, ep)
    assert champion.read_champion(root, ep)["folder"] == good
    assert len(champion.read_history(root, ep)) == 2
    assert champion.is_promoted(good, ep) and not champion.is_promoted(bad, ep)


def test_retention_keeps_a_promoted_checkpoint(tmp_path):
    for step in (1, 2, 3, 4):
        _fake_checkpoint(tmp_path, step)
    champion.record_decision(str(tmp_path), _decision(ckpt.step_dir(str(tmp_path), 1), 1, 0.6, promoted=True))
    ckpt.apply_retention(str(tmp_path), keep_last=2)
    assert [s for s, _ in ckpt.complete_checkpoints(str(tmp_path))] == [1, 3, 4]


def test_retraining_starts_from_the_champion_else_the_newest_else_the_warm_start(tmp_path):
    from siirl_core.retraining import starting_point

    root = str(tmp_path)
    assert starting_point(root) == {"kind": "warm_start", "folder": "", "step": 0}
    for step in (2, 4):
        _fake_checkpoint(tmp_path, step)
    _fake_checkpoint(tmp_path, 6, complete=False)  # killed mid-save
    assert starting_point(root) == {"kind": "newest", "folder": ckpt.step_dir(root, 4), "step": 4}
    champion.record_decision(root, _decision(ckpt.step_dir(root, 2), 2, 0.6, promoted=True))
    assert starting_point(root) == {"kind": "champion", "folder": ckpt.step_dir(root, 2), "step": 2}


def test_a_champion_that_is_not_a_complete_checkpoint_stops_retraining(tmp_path):
    import pytest

    from siirl_core.retraining import starting_point

    _fake_checkpoint(tmp_path, 4)
    broken = _fake_checkpoint(tmp_path, 2, complete=False)
    champion.record_decision(str(tmp_path), _decision(broken, 2, 0.6, promoted=True))
    with pytest.raises(FileNotFoundError, match=r"champion recorded in .*champion.json .* is not a complete checkpoint"):
        starting_point(str(tmp_path))
