"""Prompt data from local jsonl and parquet files in the schema verl users have:

    {"prompt": "12+35=" | [{"role": "user", "content": "..."}, ...],
     "data_source": "openai/gsm8k",                 (optional; the file's name otherwise)
     "reward_model": {"ground_truth": "47", ...},
     "extra_info": {...}}                           (optional; passed to the reward function)

Chat-message prompts go through the tokenizer's chat template when it has one (joined
by newlines otherwise). Prompts longer than task.max_prompt_length tokens are dropped
with a count in the log. Training order is a fresh permutation per epoch, seeded and
indexed by step, so a resumed run continues the same order. A malformed row stops
everything with an error naming the file, the line (jsonl, from 1) or row (parquet,
from 0) and the field.
"""
from __future__ import annotations

import json
import logging
import os

import numpy as np

from siirl_core.data.procedural import Problem, is_heldout

log = logging.getLogger("siirl.data")


class DataFileError(ValueError):
    """A data file cannot be used; the message names the file, the line (jsonl) or row
    (parquet) and the field."""


def read_rows(path: str) -> list[tuple[str, dict]]:
    """(where, row) for each row: `line N` (from 1, as editors count) in a jsonl file,
    `row N` (from 0, as pyarrow and pandas index) in a parquet file."""
    if not os.path.isfile(path):
        raise DataFileError(f"{path}: no such data file")
    if path.endswith(".parquet"):
        import pyarrow.parquet as pq

        try:
            return [(f"row {i}", r) for i, r in enumerate(pq.read_table(path).to_pylist())]
        except Exception as err:  # pyarrow raises several types for a damaged file
            raise DataFileError(f"{path}: not a readable parquet file ({type(err).__name__}: {err})") from None
    if not path.endswith((".jsonl", ".json")):
        raise DataFileError(f"{path}: expected a .jsonl or .parquet file")
    rows = []
    with open(path) as f:
        for n, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except ValueError as err:
                raise DataFileError(f"{path}: line {n}: not valid JSON ({err})") from None
            if not isinstance(row, dict):
                raise DataFileError(f"{path}: line {n}: expected a JSON object, got {type(row).__name__}")
            rows.append((f"line {n}", row))
    return rows


def _prompt_text(path: str, where: str, prompt, tokenizer) -> str:
    if isinstance(prompt, str):
        return prompt
    ok = isinstance(prompt, list) and prompt and all(
        isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str) for m in prompt)
    if not ok:
        raise DataFileError(f"{path}: {where}: field 'prompt' must be a string or a non-empty list of "
                            f"{{'role': str, 'content': str}} messages; got {str(prompt)[:80]!r}")
    if tokenizer is not None and getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template(prompt, add_generation_prompt=True, tokenize=False)
    return "\n".join(m["content"] for m in prompt)


def parse_row(path: str, i: int, where: str, row: dict, tokenizer=None) -> Problem:
    """Row i of the file (`where` names it for people: `line 3`, `row 2`)."""
    if "prompt" not in row:
        raise DataFileError(f"{path}: {where}: field 'prompt' is missing (a string or chat messages)")
    rm = row.get("reward_model")
    if not isinstance(rm, dict) or rm.get("ground_truth") is None:
        raise DataFileError(f"{path}: {where}: field 'reward_model.ground_truth' is missing "
                            "(expected {'reward_model': {'ground_truth': ...}})")
    extra = row.get("extra_info") or {}
    if not isinstance(extra, dict):
        raise DataFileError(f"{path}: {where}: field 'extra_info' must be an object, got {type(extra).__name__}")
    source = row.get("data_source") or os.path.splitext(os.path.basename(path))[0]
    if not isinstance(source, str):
        raise DataFileError(f"{path}: {where}: field 'data_source' must be a string")
    truth = rm["ground_truth"]
    return Problem(_prompt_text(path, where, row["prompt"], tokenizer), str(truth), ground_truth=truth,
                   data_source=source, extra_info=dict(extra), uid=f"{os.path.basename(path)}:{i}")


def load_problems(paths: list[str], tokenizer=None, max_prompt_length: int = 0) -> list[Problem]:
    out = []
    for path in paths:
        problems = [parse_row(path, i, where, row, tokenizer) for i, (where, row) in enumerate(read_rows(path))]
        if max_prompt_length:
            length = (lambda p: len(tokenizer(p.prompt)["input_ids"])) if tokenizer is not None else \
                (lambda p: len(p.prompt))
            kept = [p for p in problems if length(p) <= max_prompt_length]
            if len(kept) < len(problems):
                log.warning("%s: dropped %d of %d rows longer than task.max_prompt_length=%d", path,
                            len(problems) - len(kept), len(problems), max_prompt_length)
            problems = kept
        if not problems:
            raise DataFileError(f"{path}: no usable rows")
        out += problems
    return out


class FileTask:
    """Problems from data files; held out: task.val_files, or one row in ten of the
    training files (by a stable hash) when there are none."""

    name = "file"
    default_reward = "exact_match"

    def __init__(self, train_files: list[str], val_files: list[str] = (), eval_size: int = 500,
                 max_prompt_length: int = 0, tokenizer=None):
        if not train_files:
            raise DataFileError("task.train_files is empty: task=file needs at least one .jsonl or .parquet file")
        rows = load_problems(list(train_files), tokenizer, max_prompt_length)
        if val_files:
            self.train = rows
            self.heldout = load_problems(list(val_files), tokenizer, max_prompt_length)
        else:
            self.train = [p for p in rows if not is_heldout(p.prompt)]
            self.heldout = [p for p in rows if is_heldout(p.prompt)]
        if not self.train:
            raise DataFileError(f"task.train_files={list(train_files)}: no training rows left")
        self.eval_size = eval_size
        # The tiny factory's character tokenizer needs every character the data uses.
        self.alphabet = "".join(sorted({c for p in self.train + self.heldout for c in p.prompt + p.answer}))

    @classmethod
    def from_config(cls, t, tokenizer=None) -> "FileTask":
        return cls(list(t.train_files), list(t.val_files), t.eval_size, t.max_prompt_length, tokenizer)

    def _epoch_order(self, seed: int, stream: int, epoch: int) -> np.ndarray:
        return np.random.default_rng([seed, 4, stream, epoch]).permutation(len(self.train))

    def train_batch(self, seed: int, step: int, size: int, stream: int = 0) -> list[Problem]:
        """Rows (step-1)*size ... step*size-1 of the epoch-by-epoch shuffled order."""
        n, orders, out = len(self.train), {}, []
        for i in range((step - 1) * size, step * size):
            epoch = i // n
            if epoch not in orders:  # a batch spans at most a few epochs: one permutation each
                orders[epoch] = self._epoch_order(seed, stream, epoch)
            out.append(self.train[int(orders[epoch][i % n])])
        return out

    def demonstrations(self, seed: int, step: int, size: int) -> list[Problem]:
        rng = np.random.default_rng([seed, step, 2])
        return [self.train[int(i)] for i in rng.integers(len(self.train), size=size)]

    def eval_set(self) -> list[Problem]:
        return self.heldout[:self.eval_size]

    def score(self, response: str, problem: Problem, finished: bool) -> float:
        return 1.0 if finished and response.strip() == problem.answer.strip() else 0.0

    def answer_of(self, response: str, finished: bool) -> str | None:
        return response.strip() if finished and response.strip() else None

    def format_ok(self, response: str, finished: bool) -> bool:
        return finished and bool(response.strip())

