"""Weights & Biases tracking (siirl_core/wandb_tracking.py) with the real wandb package in
offline mode, read back from the files it writes (a reader of W&B's record log written
here, independent of siirl): the config, every step's metrics, a resume that continues
the same run id without logging a step twice; a missing wandb is a config error."""
import glob
import importlib.util
import json
import os

import pytest

from siirl_core.compose import compose_config
from siirl_core.config import ConfigError
from siirl_core.tracking import build_trackers

BLOCK = 32768  # W&B's run file is a LevelDB-style log: 32 KiB blocks of framed records


def wandb_records(path: str) -> list:
    """The protobuf Records of one offline run file: a 7-byte header (":W&B", magic,
    version), then records framed as crc32 (4), length (2, little-endian), type (1:
    whole, 2: first, 3: middle, 4: last piece), never crossing a block boundary."""
    from wandb.proto import wandb_internal_pb2 as pb

    data = open(path, "rb").read()
    assert data[:4] == b":W&B"
    records, pending, pos = [], b"", 7
    while pos + 7 <= len(data):
        left = BLOCK - pos % BLOCK
        if left < 7:  # a block's tail too short for a header is padding
            pos += left
            continue
        length, kind = int.from_bytes(data[pos + 4:pos + 6], "little"), data[pos + 6]
        if kind == 0:  # zero padding to the block's end
            pos += left
            continue
        pending += data[pos + 7:pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):
            record = pb.Record()
            record.ParseFromString(pending)
            records.append(record)
            pending = b""
    return records


def wandb_history(run_folder: str) -> tuple[dict, list[tuple[int, dict]], str]:
    """(config, [(step, metrics)], run id) over every offline run file of a run folder."""
    config, steps, run_id = {}, [], ""
    for path in sorted(glob.glob(os.path.join(run_folder, "wandb", "offline-run-*", "run-*.wandb"))):
        for record in wandb_records(path):
            kind = record.WhichOneof("record_type")
            if kind == "run":
                run_id = record.run.run_id
                config.update({item.key: json.loads(item.value_json) for item in record.run.config.update})
            elif kind == "history":
                items = {item.key or "/".join(item.nested_key): json.loads(item.value_json)
                         for item in record.history.item}
                steps.append((items.pop("_step"), {k: v for k, v in items.items() if not k.startswith("_")}))
    return config, steps, run_id


def test_an_offline_run_is_written_and_a_resume_continues_it(tmp_path):
    cfg = compose_config(["tracking.wandb=true", "tracking.experiment=unit", "run_name=tracked", "trainer.lr=0.003"])
    run_dir = str(tmp_path)
    [tracker] = build_trackers(cfg, run_dir, resumed_from=0, flow_run_name="calm-owl")
    for step in (0, 1, 2, 3):
        tracker.write(step, {"reward/mean": step / 10, "val/accuracy": 0.25})
    tracker.fail()  # the run stopped after step 3
    [resumed] = build_trackers(cfg, run_dir, resumed_from=1)  # resumed from the checkpoint of step 1
    for step in (2, 3, 4):  # steps 2 and 3 replayed, equal: W&B takes no step below its latest (3)
        resumed.write(step, {"reward/mean": step / 10})
    resumed.write(4, {"val/accuracy": 0.5})  # the evaluation after the last step
    resumed.finish()

    config, steps, run_id = wandb_history(run_dir)
    assert config["trainer"]["lr"] == 0.003 and config["algorithm"]["adv_estimator"] == "grpo"
    assert run_id == tracker.run.id == resumed.run.id
    assert [s for s, _ in steps] == [0, 1, 2, 3, 3, 4]  # step 2 not sent again; 3 again, with its value
    assert dict(steps)[2] == {"reward/mean": 0.2, "val/accuracy": 0.25}
    assert steps[-1] == (4, {"reward/mean": 0.4, "val/accuracy": 0.5})
    assert json.load(open(os.path.join(run_dir, "wandb_run.json")))["last_step"] == 4


def test_wandb_without_the_package_or_with_a_bad_mode_is_a_config_error(monkeypatch):
    with pytest.raises(ConfigError, match="tracking.wandb_mode"):
        compose_config(["tracking.wandb=true", "tracking.wandb_mode=cloud"])
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "wandb" else real(name, *a))
    with pytest.raises(ConfigError, match=r"tracking.wandb=true needs Weights & Biases.*pip install 'siirl\[tracking\]'"):
        compose_config(["tracking.wandb=true"])
