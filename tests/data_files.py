"""Writers of small verl-schema data files for tests."""
from __future__ import annotations

import json


def arithmetic_rows(n: int, source: str, chat: bool = False, start: int = 0) -> list[dict]:
    rows = []
    for i in range(start, start + n):
        a, b = i % 97, (i * 7) % 89
        prompt = [{"role": "user", "content": f"{a}+{b}="}] if chat else f"{a}+{b}="
        rows.append({"prompt": prompt, "data_source": source, "reward_model": {"ground_truth": str(a + b)},
                     "extra_info": {"index": i}})
    return rows


def write_jsonl(path, rows: list[dict]) -> str:
    with open(path, "w") as f:
        for r in rows:
            f.write(json.dumps(r) + "\n")
    return str(path)


def write_parquet(path, rows: list[dict]) -> str:
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.Table.from_pylist(rows), str(path))
    return str(path)
