import random

import numpy as np
import torch

from siirl_core.rng import load_rng_state, save_rng_state


def test_rng_round_trip(tmp_path):
    path = str(tmp_path / "rng.safetensors")
    torch.manual_seed(3)
    np.random.seed(4)
    random.seed(5)
    save_rng_state(path)
    expected = (torch.rand(3), np.random.rand(3), random.random())
    torch.manual_seed(99)
    np.random.seed(99)
    random.seed(99)
    load_rng_state(path)
    got = (torch.rand(3), np.random.rand(3), random.random())
    assert torch.equal(expected[0], got[0])
    assert np.array_equal(expected[1], got[1])
    assert expected[2] == got[2]
