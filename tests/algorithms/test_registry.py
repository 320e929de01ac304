import pytest

from siirl_core.algorithms import (
    ADVANTAGE_ESTIMATORS,
    KL_ESTIMATORS,
    LOSS_AGG_MODES,
    POLICY_LOSSES,
    Registry,
    dr_grpo_advantages,
    grpo_advantages,
    kl_k3,
    ppo_clip_loss,
)


def test_register_returns_function_and_get_finds_it():
    reg = Registry("widget")

    @reg.register("alpha")
    def alpha():
        return 1

    # The decorator must hand back the original function, not a wrapper.
    assert alpha() == 1
    assert reg.get("alpha") is alpha
    assert "alpha" in reg
    assert "beta" not in reg


def test_duplicate_name_is_rejected_and_original_kept():
    reg = Registry("widget")

    @reg.register("alpha")
    def first():
        return "first"

    with pytest.raises(ValueError, match="alpha"):

        @reg.register("alpha")
        def second():
            return "second"

    assert reg.get("alpha") is first


def test_names_are_sorted():
    reg = Registry("widget")
    for name in ["gamma", "alpha", "beta"]:
        reg.register(name)(lambda: None)
    assert reg.names() == ["alpha", "beta", "gamma"]
    assert len(reg) == 3


def test_unknown_name_keyerror_names_kind_name_and_sorted_known_names():
    reg = Registry("widget")
    # Registered out of order: the message must list them sorted.
    reg.register("zeta")(lambda: None)
    reg.register("alpha")(lambda: None)
    with pytest.raises(KeyError) as excinfo:
        reg.get("omega")
    msg = excinfo.value.args[0]
    assert "widget" in msg
    assert "'omega'" in msg
    assert "alpha, zeta" in msg


def test_unknown_name_on_empty_registry():
    with pytest.raises(KeyError) as excinfo:
        Registry("widget").get("x")
    assert "(none)" in excinfo.value.args[0]


def test_module_registries_hold_the_builtin_entries():
    assert ADVANTAGE_ESTIMATORS.kind == "advantage estimator"
    assert POLICY_LOSSES.kind == "policy loss"
    assert KL_ESTIMATORS.kind == "KL estimator"
    assert LOSS_AGG_MODES.kind == "loss aggregation mode"
    assert ADVANTAGE_ESTIMATORS.get("grpo") is grpo_advantages
    assert ADVANTAGE_ESTIMATORS.get("dr_grpo") is dr_grpo_advantages
    assert POLICY_LOSSES.get("vanilla") is ppo_clip_loss
    assert KL_ESTIMATORS.get("k3") is kl_k3
    assert KL_ESTIMATORS.names() == ["abs", "full", "k1", "k2", "k3"]
    assert ADVANTAGE_ESTIMATORS.names() == ["dr_grpo", "gae", "grpo", "reinforce_plus_plus",
                                            "reinforce_plus_plus_baseline", "remax", "rloo"]
    assert POLICY_LOSSES.names() == ["cispo", "gmpo", "gpg", "gspo", "vanilla"]
    assert LOSS_AGG_MODES.names() == ["seq-mean-token-mean", "seq-mean-token-sum", "token-mean"]
