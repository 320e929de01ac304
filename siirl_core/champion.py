"""The champion policy of a storage location, for scheduled retraining.

`<root>/champion.json` points at the checkpoint folder that is the current champion;
`<root>/champion_history.json` lists every retraining decision (promoted or rejected,
with both scores); a promoted checkpoint folder also gets a `promoted.json` mark, so
retention keeps it wherever it lives. The history is written before the pointer, so a pointer never
names a checkpoint that has no decision on record. Both are small JSON objects,
each written in one PUT (or an atomic rename on a local disk).
"""
from __future__ import annotations

import json
import posixpath
from typing import Optional

from siirl_core.storage import filesystem, join, retrying, write_whole

CHAMPION = "champion.json"
HISTORY = "champion_history.json"
# Written into a checkpoint folder when it becomes champion; not part of its manifest.
PROMOTED_MARK = "promoted.json"


def _read_json(root_uri: str, name: str, endpoint_url: str):
    fs, root = filesystem(root_uri, endpoint_url)
    try:
        data = retrying(f"read {join(root_uri, name)}", lambda: fs.cat_file(posixpath.join(root, name)))
    except FileNotFoundError:
        return None
    try:
        return json.loads(data)
    except ValueError as err:
        raise ValueError(f"{join(root_uri, name)} is not valid JSON ({err}); fix or remove it") from None


def _write_json(root_uri: str, name: str, obj, endpoint_url: str) -> None:
    write_whole(root_uri, name, json.dumps(obj, indent=1, sort_keys=True).encode(), endpoint_url)


def read_champion(root_uri: str, endpoint_url: str = "") -> Optional[dict]:
    """{folder, step, score, date, ...} of the champion, or None when there is none yet."""
    return _read_json(root_uri, CHAMPION, endpoint_url)


def read_history(root_uri: str, endpoint_url: str = "") -> list[dict]:
    return _read_json(root_uri, HISTORY, endpoint_url) or []


def record_decision(root_uri: str, decision: dict, endpoint_url: str = "") -> None:
    """Append a retraining decision to the history; when it promotes, point the champion
    at its candidate. decision: {"promoted": bool, "candidate": {"folder", "step", "score"}, ...}."""
    history = read_history(root_uri, endpoint_url) + [decision]
    _write_json(root_uri, HISTORY, history, endpoint_url)
    if decision["promoted"]:
        champion = dict(decision["candidate"], date=decision["date"], promoted_at=decision["decided_at"])
        _write_json(champion["folder"], PROMOTED_MARK, champion, endpoint_url)
        _write_json(root_uri, CHAMPION, champion, endpoint_url)


def is_promoted(folder_uri: str, endpoint_url: str = "") -> bool:
    """Whether a checkpoint folder has ever been champion (retention never deletes it)."""
    fs, folder = filesystem(folder_uri, endpoint_url)
    return retrying(f"check {join(folder_uri, PROMOTED_MARK)}",
                    lambda: fs.exists(posixpath.join(folder, PROMOTED_MARK)))
