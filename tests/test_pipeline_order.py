"""The typed iteration batch: padding by hand, and pipelines whose nodes would read a field
before any node writes it are refused at configuration time, naming node and field."""
import textwrap

import pytest
import torch

from siirl_core.batch import IterationBatch, Node, order_error, pad_rollout
from siirl_core.compose import compose_config
from siirl_core.config import ConfigError
from siirl_core.rollout.base import RolloutBatch

REST = "old_logprobs,ref_logprobs,advantage,update,sync"


def test_pad_rollout_by_hand():
    rb = RolloutBatch([[1, 2], [3]], [[4], [5, 6]], [[-0.5], [-0.1, -0.2]], [True, False], [0, 1])
    t = pad_rollout(rb, pad_id=0)
    assert t.input_ids.tolist() == [[1, 2, 4, 0], [0, 3, 5, 6]]
    assert t.attention_mask.tolist() == [[1, 1, 1, 0], [0, 1, 1, 1]]
    assert t.response_mask.tolist() == [[1.0, 0.0], [1.0, 1.0]]
    assert torch.allclose(t.rollout_log_probs, torch.tensor([[-0.5, 0.0], [-0.1, -0.2]]))
    assert t.group_index.tolist() == [0, 1] and t.response_len == 2


@pytest.mark.parametrize("overrides", [
    [], ["algorithm=ppo"], ["algorithm=dapo"], ["algorithm=dr_grpo"], ["algorithm.adv_estimator=remax"],
    ["algorithm.kl_in_reward=true", "algorithm.kl_estimator=full", "algorithm.kl_coef=0.05"],
])
def test_every_preset_pipeline_is_in_a_legal_order(overrides):
    from siirl_core.pipeline import default_pipeline, resolve_pipeline

    cfg = compose_config(overrides)
    assert len(resolve_pipeline(cfg)) == len(default_pipeline(cfg))


@pytest.mark.parametrize("pipeline, message", [
    (f"[rollout,advantage,reward,{REST.replace('advantage,', '')}]",
     "node 'advantage' reads scores before any node writes it (written by reward, which comes later)"),
    ("[rollout,reward,ref_logprobs,advantage,update,sync]",
     "node 'update' reads old_log_probs before any node writes it (no node in the pipeline writes it)"),
    ("[reward,rollout,old_logprobs,ref_logprobs,advantage,update,sync]",
     "node 'reward' reads problems, rollout before any node writes it (written by rollout, which comes later)"),
])
def test_a_pipeline_out_of_order_is_a_config_error(pipeline, message):
    with pytest.raises(ConfigError, match="algorithm.pipeline cannot run: " + message.replace("(", r"\(")
                       .replace(")", r"\)")):
        compose_config([f"algorithm.pipeline={pipeline}"])


def test_ppo_without_the_values_node_is_refused():
    with pytest.raises(ConfigError, match="node 'advantage' reads values before any node writes it"):
        compose_config(["algorithm=ppo", f"algorithm.pipeline=[rollout,reward,{REST}]"])


def test_user_nodes_declare_what_they_read_and_write(tmp_path):
    path = tmp_path / "nodes.py"
    path.write_text(textwrap.dedent("""
        import torch
        from siirl_core.batch import declared

        @declared(reads=("rollout",), writes=("scores",))
        def length_reward(parts, batch, bag):
            batch.scores = torch.tensor([float(len(r)) for r in batch.rollout.response_ids])

        @declared(reads=("score",))
        def typo(parts, batch, bag):
            pass
    """))
    # A user node that writes the scores replaces the reward node.
    cfg = compose_config([f"algorithm.pipeline=[rollout,{path}:length_reward,{REST}]"])
    assert len(cfg.algorithm.pipeline) == 7
    with pytest.raises(ConfigError, match=r"node '.*nodes.py:typo' names 'score', which is not a field of the batch"):
        compose_config([f"algorithm.pipeline=[rollout,reward,{path}:typo,{REST}]"])


def test_order_error_accepts_fields_given_before_the_first_node():
    def noop(*_):
        return None

    nodes = [Node("a", noop, ("step",), ("scores",)), Node("b", noop, ("scores",), ())]
    assert order_error(nodes, IterationBatch) is None
    assert order_error(nodes[1:], IterationBatch) == (
        "node 'b' reads scores before any node writes it (no node in the pipeline writes it)")
