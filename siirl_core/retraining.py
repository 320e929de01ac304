"""Where a scheduled retraining run starts: the champion, else the newest checkpoint,
else the warm start."""
from __future__ import annotations

from siirl_core import champion
from siirl_core import checkpoint as ckpt


def starting_point(root_uri: str, endpoint_url: str = "") -> dict:
    """{"kind": champion|newest|warm_start, "folder", "step"}: the champion when there is
    one (an error when its checkpoint is not complete: retraining from something else
    would silently replace it), else the newest complete checkpoint, else the warm-start
    policy (step 0)."""
    current = champion.read_champion(root_uri, endpoint_url)
    if current is not None:
        if ckpt.verify(current["folder"], endpoint_url) is None:
            raise FileNotFoundError(f"the champion recorded in {root_uri}/{champion.CHAMPION} ({current['folder']}) "
                                    "is not a complete checkpoint (see the log); restore it or remove the pointer")
        return {"kind": "champion", "folder": current["folder"], "step": current["step"]}
    complete = ckpt.complete_checkpoints(root_uri, endpoint_url)
    if complete:
        step, folder = complete[-1]
        return {"kind": "newest", "folder": folder, "step": step}
    return {"kind": "warm_start", "folder": "", "step": 0}
