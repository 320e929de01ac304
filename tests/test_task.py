from siirl_core.data import ArithmeticTask, shard
from siirl_core.rewards import RewardScorer, add_format_bonus, exact_match


def test_train_batches_are_a_function_of_seed_and_step():
    task = ArithmeticTask()
    assert task.train_batch(0, 5, 32) == task.train_batch(0, 5, 32)
    assert task.train_batch(0, 5, 32) != task.train_batch(0, 6, 32)
    assert task.train_batch(0, 5, 32) != task.train_batch(1, 5, 32)


def test_heldout_set_is_disjoint_from_training_prompts():
    task = ArithmeticTask(eval_size=300)
    heldout = {p.prompt for p in task.eval_set()}
    assert len(heldout) == 300
    seen = {p.prompt for step in range(200) for p in task.train_batch(0, step, 64)}
    seen |= {p.prompt for step in range(50) for p in task.demonstrations(0, step, 64)}
    assert not heldout & seen


def test_answers_are_correct_for_each_operator():
    task = ArithmeticTask(min_digits=1, max_digits=3, operators=("+", "-", "*"))
    for p in task.train_batch(3, 0, 200):
        assert str(eval(p.prompt[:-1])) == p.answer  # noqa: S307 - digits and one operator


def test_shards_cover_the_batch_exactly_once():
    batch = list(range(12))
    parts = [shard(batch, r, 3) for r in range(3)]
    assert sum(parts, []) == batch


def test_exact_match_needs_the_answer_and_eos():
    task = ArithmeticTask()
    texts, finished = ["47", "47", "48", "4x"], [True, False, True, True]
    scorer = RewardScorer(exact_match, "exact_match", {}, False, 5.0, "score", 0.0)
    scored = scorer.score([{"data_source": "arithmetic", "solution_str": t, "ground_truth": "47",
                            "extra_info": {"finished": f, "id": str(i)}} for i, (t, f) in enumerate(zip(texts, finished))])
    acc, rewards = scored.accuracies, add_format_bonus(task, texts, finished, scored, 0.1)
    assert acc == [1.0, 0.0, 0.0, 0.0]
    # The format bonus goes to a well-formed wrong answer only.
    assert rewards == [1.0, 0.0, 0.1, 0.0]


def test_countdown_and_reverse_generate_verifiable_problems():
    from siirl_core.data import CountdownTask, ReverseTask

    cd = CountdownTask(terms=3, max_number=9, operators=("+", "-", "*"))
    batch = cd.train_batch(0, 1, 16)
    assert all(cd.score(p.answer, p, True) == 1.0 for p in batch)  # the generator's own equation solves it
    p = batch[0]
    assert cd.score(p.answer + "+1", p, True) == 0.0 and cd.score(p.answer, p, False) == 0.0
    nums = p.ground_truth["numbers"]
    assert sorted(int(x) for x in p.prompt.split(">")[0].split(",")) == sorted(nums)
    assert not {q.prompt for q in cd.eval_set()} & {q.prompt for q in cd.train_batch(0, 2, 64)}
    rv = ReverseTask(min_length=3, max_length=5)
    for q in rv.train_batch(0, 1, 16):
        assert q.prompt.endswith("<") and q.answer == q.prompt[:-1][::-1] and rv.score(q.answer, q, True) == 1.0
    assert set(rv.alphabet) >= set("".join(q.prompt for q in rv.eval_set()))
