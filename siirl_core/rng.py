"""RNG states of torch, NumPy and Python in a safetensors file (no pickle).

Sampling and shuffling seeds are derived from (seed, step), so a restore does not
depend on these; they are kept so anything else drawing from the global generators
continues exactly as an uninterrupted run would."""
from __future__ import annotations

import json
import random

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import save_file


def save_rng_state(path: str) -> None:
    np_state = np.random.get_state()
    tensors = {"torch_cpu": torch.get_rng_state(), "numpy_keys": torch.from_numpy(np_state[1].astype(np.int64))}
    if torch.cuda.is_available():
        tensors["torch_cuda"] = torch.cuda.get_rng_state()
    py_version, py_state, py_gauss = random.getstate()
    meta = {"numpy": json.dumps([np_state[0], int(np_state[2]), int(np_state[3]), float(np_state[4])]),
            "python": json.dumps([py_version, list(py_state), py_gauss])}
    save_file(tensors, path, metadata=meta)


def load_rng_state(path: str) -> None:
    with safe_open(path, framework="pt") as f:
        meta = f.metadata()
        torch.set_rng_state(f.get_tensor("torch_cpu"))
        if "torch_cuda" in f.keys() and torch.cuda.is_available():
            torch.cuda.set_rng_state(f.get_tensor("torch_cuda"))
        name, pos, has_gauss, cached = json.loads(meta["numpy"])
        np.random.set_state((name, f.get_tensor("numpy_keys").numpy().astype(np.uint32), pos, has_gauss, cached))
    py_version, py_state, py_gauss = json.loads(meta["python"])
    random.setstate((py_version, tuple(py_state), py_gauss))
