"""Built-in rewards, user reward functions from a file, and failures handled as configured."""
import logging
import textwrap
import time

import pytest

from siirl_core.compose import compose_config
from siirl_core.config import ConfigError
from siirl_core.rewards import REWARDS, RewardError, RewardScorer, load_reward_function


def _sample(text: str, truth, i: int = 0, finished: bool = True) -> dict:
    return {"data_source": "test", "solution_str": text, "ground_truth": truth,
            "extra_info": {"finished": finished, "id": f"sample-{i}"}}


def test_builtin_rewards_by_hand():
    numeric, fmt, cd, lp = (REWARDS.get(n) for n in ("numeric", "format", "countdown", "length_penalty"))
    assert numeric("d", "so 40+2\n#### 42", "42", {}) == 1.0
    assert numeric("d", "the answer is \\boxed{1,234}", "1234", {}) == 1.0
    assert numeric("d", "#### 41", "42", {}) == 0.0 and numeric("d", "42", "42", {}) == 0.0  # no marked answer
    assert fmt("d", "<think>x</think> 5", None, {}, pattern=r"<think>.*</think>.*") == 1.0
    assert fmt("d", "5", None, {}, pattern=r"<think>.*</think>.*") == 0.0
    truth = {"numbers": [3, 5, 7], "target": 22}
    assert cd("d", "3*5+7", truth, {}) == 1.0
    assert cd("d", "7+5*3", truth, {}) == 1.0  # any order, precedence respected
    assert cd("d", "3*5+7+0", truth, {}) == 0.1  # uses a number not given: format score only
    assert cd("d", "3+5+7", truth, {}) == 0.1  # right numbers, wrong value
    assert cd("d", "3**5*7", truth, {}) == 0.0  # a power is not allowed: scores nothing, computes nothing
    assert lp("d", "x" * 70, None, {}, max_length=64, coef=0.5) == -3.0


def test_user_reward_function_from_a_file(tmp_path):
    path = tmp_path / "my_reward.py"
    path.write_text(textwrap.dedent("""
        def compute_score(data_source, solution_str, ground_truth, extra_info=None, bonus=0.0):
            return {"score": float(solution_str == ground_truth) + bonus, "acc": solution_str == ground_truth}
    """))
    fn = load_reward_function(f"{path}:compute_score", kwargs={"bonus": 0.5})
    scorer = RewardScorer(fn, "mine", {"bonus": 0.5}, False, 5.0, "score", 0.0)
    out = scorer.score([_sample("7", "7"), _sample("8", "7", 1)])
    assert out.rewards == [1.5, 0.5] and out.accuracies == [1.0, 0.0]
    # The config names the function; a wrong name or signature fails at config time.
    cfg = compose_config([f"reward.function={path}:compute_score"])
    assert cfg.reward.function.endswith(":compute_score")
    with pytest.raises(ConfigError, match=r"has no 'score_it'; it defines \['compute_score'\]"):
        compose_config([f"reward.function={path}:score_it"])
    with pytest.raises(ConfigError, match="does not exist"):
        compose_config([f"reward.function={tmp_path}/missing.py:f"])
    path.write_text("def two(a, b):\n    return 1.0\n")
    with pytest.raises(ConfigError, match=r"must accept the per-sample signature"):
        compose_config([f"reward.function={path}:two"])


def _failing(data_source, solution_str, ground_truth, extra_info):
    if solution_str == "boom":
        raise ValueError("cannot parse")
    if solution_str == "hang":
        import time
        time.sleep(30)
    return 1.0


def test_raising_and_hanging_rewards_score_the_configured_value(caplog):
    scorer = RewardScorer(_failing, "flaky", {}, False, 0.3, "score", -1.0)
    with caplog.at_level(logging.WARNING, logger="siirl.reward"):
        out = scorer.score([_sample("ok", "x", 0), _sample("boom", "x", 1), _sample("boom", "x", 2),
                            _sample("hang", "x", 3), _sample("ok", "x", 4)])
    assert out.rewards == [1.0, -1.0, -1.0, -1.0, 1.0]
    assert out.errors == 2 and out.timeouts == 1 and out.failed_ids == ["sample-1", "sample-2", "sample-3"]
    # Logged once per kind, naming the sample.
    assert caplog.text.count("failed on sample") == 2 and "sample-1: ValueError: cannot parse" in caplog.text
    assert "sample-3: timeout" in caplog.text


def test_on_error_stop_stops_with_the_sample_id():
    scorer = RewardScorer(_failing, "flaky", {}, False, 5.0, "stop", 0.0)
    with pytest.raises(RewardError, match=r"flaky failed on sample sample-1: ValueError: cannot parse"):
        scorer.score([_sample("ok", "x", 0), _sample("boom", "x", 1)])


def test_batched_reward_function():
    def batched(sources, texts, truths, infos):
        return [float(t == g) for t, g in zip(texts, truths)]

    scorer = RewardScorer(batched, "batched", {}, True, 5.0, "score", 0.0)
    assert scorer.score([_sample("1", "1"), _sample("2", "1", 1)]).rewards == [1.0, 0.0]
    short = RewardScorer(lambda *a: [1.0], "short", {}, True, 5.0, "score", 0.0)
    out = short.score([_sample("1", "1"), _sample("2", "1", 1)])
    assert out.rewards == [0.0, 0.0] and out.failed_ids == ["sample-0"]


@pytest.mark.parametrize("returned, said", [
    (float("nan"), "returned nan"), (float("inf"), "returned inf"), ({"score": float("-inf")}, "returned -inf"),
    (None, "returned None"), ("1.0", "returned '1.0'"), ({"acc": True}, "returned a dict without 'score'"),
    ([1.0], "returned a list"),
])
def test_a_return_value_that_is_not_a_finite_number_is_an_error(returned, said, caplog):
    scorer = RewardScorer(lambda *a: returned, "odd", {}, False, 5.0, "score", -1.0)
    with caplog.at_level(logging.WARNING, logger="siirl.reward"):
        out = scorer.score([_sample("1", "1", 0), _sample("2", "1", 1)])
    assert out.rewards == [-1.0, -1.0] and out.accuracies == [0.0, 0.0]
    assert out.errors == 2 and out.failed_ids == ["sample-0", "sample-1"]
    assert f"odd failed on sample sample-0: bad return value: {said}" in caplog.text
    stop = RewardScorer(lambda *a: returned, "odd", {}, False, 5.0, "stop", 0.0)
    with pytest.raises(RewardError, match=f"odd failed on sample sample-0: bad return value: {said}"):
        stop.score([_sample("1", "1", 0)])


def test_numbers_of_other_types_are_scores():
    import numpy as np
    import torch

    for value in (np.float32(0.5), torch.tensor(0.5), True, 1):
        out = RewardScorer(lambda *a, v=value: v, "typed", {}, False, 5.0, "score", 0.0).score([_sample("1", "1")])
        assert out.rewards == [float(value)] and out.errors == 0


def test_a_function_failing_on_most_samples_stops_the_run_after_some_batches():
    """More than max_error_rate of a batch fails in max_error_batches batches in a row."""
    state = {"fail": 3}

    def flaky(source, text, truth, info):  # fails on the first `fail` samples of each batch of 4
        if int(info["id"].split("-")[1]) < state["fail"]:
            raise ValueError("cannot parse")
        return 1.0

    scorer = RewardScorer(flaky, "flaky", {}, False, 5.0, "score", 0.0, max_error_rate=0.5, max_error_batches=3)
    batch = [_sample("x", "1", i) for i in range(4)]
    for _ in range(2):
        assert scorer.score(batch).errors == 3  # 3 of 4 > 0.5: counted, not yet stopped
    state["fail"] = 2  # 2 of 4 is not above the rate: the run goes on and the count restarts
    assert scorer.score(batch).errors == 2
    state["fail"] = 3
    for _ in range(2):
        scorer.score(batch)
    with pytest.raises(RewardError, match=r"flaky failed on 3 of 4 samples, more than reward.max_error_rate=0.5, "
                                          r"in 3 batches in a row.*Last failure: reward function flaky failed on "
                                          r"sample sample-2: ValueError: cannot parse"):
        scorer.score(batch)


def test_batched_function_returning_a_non_list_fails_every_sample():
    scorer = RewardScorer(lambda *a: 1.0, "scalar", {}, True, 5.0, "score", -1.0)
    out = scorer.score([_sample("1", "1"), _sample("2", "1", 1)])
    assert out.rewards == [-1.0, -1.0] and out.errors == 2
    nan_one = RewardScorer(lambda *a: [1.0, float("nan")], "nan_one", {}, True, 5.0, "score", -1.0)
    out = nan_one.score([_sample("1", "1"), _sample("2", "1", 1)])
    assert out.rewards == [1.0, -1.0] and out.errors == 1 and out.failed_ids == ["sample-1"]


def test_error_rate_settings_are_checked_at_config_time():
    assert compose_config([]).reward.max_error_rate == 0.5
    with pytest.raises(ConfigError, match=r"reward.max_error_rate=1.5: expected a share of samples in \[0, 1\]"):
        compose_config(["reward.max_error_rate=1.5"])
    with pytest.raises(ConfigError, match=r"reward.max_error_batches=0 is not allowed; expected a number > 0"):
        compose_config(["reward.max_error_batches=0"])


def _hanging(starts: list):
    def fn(data_source, solution_str, ground_truth, extra_info):
        starts.append(time.monotonic())
        time.sleep(3)  # far past the timeout; short enough not to hold the test process at exit
        return 1.0
    return fn


def test_hanging_calls_time_out_together_not_one_after_another():
    starts: list = []
    scorer = RewardScorer(_hanging(starts), "hangs", {}, False, 0.5, "score", -1.0, threads=8)
    out = scorer.score([_sample("x", "x", i) for i in range(6)])
    assert out.rewards == [-1.0] * 6 and out.timeouts == 6
    # Every call had started before the first one's timeout ran out: one timeout for the batch.
    assert len(starts) == 6 and max(starts) - min(starts) < 0.5


def test_calls_waiting_behind_hung_threads_still_run():
    starts: list = []
    scorer = RewardScorer(_hanging(starts), "hangs", {}, False, 0.3, "score", 0.0, threads=4)
    out = scorer.score([_sample("x", "x", i) for i in range(12)])
    # Three waves of four: each wave's stuck threads are left behind and the next wave
    # gets a fresh pool (without it, calls 5-12 would wait forever).
    assert out.timeouts == 12 and len(starts) == 12


def test_a_function_that_never_returns_stops_the_run_within_a_batch():
    scorer = RewardScorer(_hanging([]), "stuck", {}, False, 0.3, "score", 0.0, threads=8)
    with pytest.raises(RewardError, match=r"reward function stuck timed out 24 times; each left a thread behind"):
        scorer.score([_sample("x", "x", i) for i in range(64)])
