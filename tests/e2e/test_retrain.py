"""Scheduled retraining with an evaluation gate, and the evaluation flow on its champion.

Night 1 starts from nothing but the warm start: the candidate trains 30 iterations
and must be promoted. Night 2 is built to be worse (learning rate 0.05 wrecks the
model): it must be refused, kept for inspection, and the champion must stay."""
import json
import os

import pytest

from siirl_core import champion
from siirl_core import checkpoint as ckpt
from tests.e2e.helpers import run_siirl
from tests.e2e.learning_cases import CASES

pytestmark = pytest.mark.slow
# Night 1 must beat the warm start by this much (the promotion gate's retrain.margin).
MARGIN = CASES["retrain"].margin


@pytest.fixture(scope="module")
def two_nights(tmp_path_factory, cache_dir):
    root = str(tmp_path_factory.mktemp("retrain"))
    gate = f"retrain.margin={MARGIN}"
    run_siirl(CASES["retrain"].command(root, cache_dir) + [gate])
    after_one = {"champion": champion.read_champion(root), "history": champion.read_history(root)}
    run_siirl(["retrain", f"storage.uri={root}", f"storage.cache_dir={cache_dir}", gate, "retrain.date=2026-11-26",
               "retrain.iterations=10", "trainer.lr=0.05"])
    return root, after_one


def test_retraining_promotes_a_better_candidate(two_nights):
    root, after_one = two_nights
    first = after_one["history"][0]
    assert first["promoted"] and first["started_from"] == "warm_start"
    assert first["candidate"]["score"] >= first["champion"]["score"] + MARGIN, first
    assert after_one["champion"]["folder"] == first["candidate"]["folder"]
    assert after_one["champion"]["step"] == 30
    assert champion.is_promoted(first["candidate"]["folder"])


def test_retraining_refuses_a_worse_candidate_and_keeps_it(two_nights):
    root, after_one = two_nights
    history = champion.read_history(root)
    assert len(history) == 2
    second = history[1]
    assert not second["promoted"] and second["started_from"] == "champion"
    assert second["candidate"]["score"] < second["champion"]["score"], second
    # The champion restored on night 2 scores what it scored as night 1's candidate.
    assert second["champion"]["score"] == pytest.approx(history[0]["candidate"]["score"], abs=0.01)
    assert champion.read_champion(root) == after_one["champion"]
    # The rejected candidate stays, complete, for inspection, and was trained on from step 30.
    assert ckpt.verify(second["candidate"]["folder"]) is not None
    assert second["candidate"]["step"] == 40
    assert not champion.is_promoted(second["candidate"]["folder"])


def test_each_night_draws_its_own_prompts(two_nights):
    root, _ = two_nights
    seeds = [ckpt.verify(d["candidate"]["folder"])["config"]["trainer"]["data_seed"]
             for d in champion.read_history(root)]
    assert seeds == [20261125, 20261126]


def test_evaluate_flow_on_the_champion_checkpoint(two_nights, cache_dir):
    root, after_one = two_nights
    folder = after_one["champion"]["folder"]
    run_siirl(["evaluate", f"storage.uri={root}", f"evaluate.source={folder}", f"storage.cache_dir={cache_dir}",
               "evaluate.n=8", "evaluate.pass_k=[1,2,8]"])
    saved = [f for f in os.listdir(os.path.join(folder, "evaluations")) if f.endswith(".json")]
    assert len(saved) == 1
    with open(os.path.join(folder, "evaluations", saved[0])) as f:
        record = json.load(f)
    r = record["results"]
    assert record["source"]["step"] == 30 and r["val/arithmetic/prompts"] == 500
    # greedy decoding of the same weights reproduces the score the retraining gate measured
    assert r["val/arithmetic/greedy"] == pytest.approx(after_one["champion"]["score"], abs=0.01)
    assert r["val/arithmetic/pass@1"] == pytest.approx(r["val/arithmetic/mean@8"])
    assert 0 < r["val/arithmetic/mean@8"] < r["val/arithmetic/pass@2"] < r["val/arithmetic/pass@8"] <= 1
    assert 0 < r["val/arithmetic/maj@8"] <= 1
    assert ckpt.verify(folder) is not None  # results beside the files: the checkpoint stays complete
