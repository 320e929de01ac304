"""Tasks of `siirl-evaluate`: resolve what to evaluate, fetch its policy, sample and
score the held-out set, and save the results beside the source."""
from __future__ import annotations

import hashlib
import json
import os

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from siirl_core import checkpoint as ckpt
from siirl_core.config import SiirlConfig, to_dict
from siirl_core.storage import is_remote, join, write_whole


@task(cache_policy=NO_CACHE)
def resolve_source(cfg: SiirlConfig) -> dict:
    """{"kind": checkpoint|hf_dir, "uri", "step"}. Empty evaluate.source: the newest
    complete checkpoint in the run's storage."""
    src, ep = cfg.evaluate.source, cfg.storage.endpoint_url
    if not src:
        complete = ckpt.complete_checkpoints(cfg.checkpoint_root, ep)
        if not complete:
            raise FileNotFoundError(f"evaluate.source is empty and {cfg.checkpoint_root} has no complete "
                                    "checkpoint; set evaluate.source to a checkpoint folder or HF model directory")
        step, folder = complete[-1]
        return {"kind": "checkpoint", "uri": folder, "step": step}
    if not is_remote(src) and os.path.isfile(os.path.join(src, "config.json")):
        return {"kind": "hf_dir", "uri": src, "step": None}
    manifest = ckpt.verify(src, ep)
    if manifest is None:
        raise FileNotFoundError(f"evaluate.source={src!r}: not a complete checkpoint folder (see the log) "
                                "nor an HF model directory")
    return {"kind": "checkpoint", "uri": src, "step": manifest["step"]}


@task(cache_policy=NO_CACHE)
def fetch_policy(cfg: SiirlConfig, source: dict, scratch: str) -> str:
    """A local HF directory of the policy: the source itself, or the checkpoint's `policy/`
    files downloaded and checked against the manifest."""
    if source["kind"] == "hf_dir":
        return source["uri"]
    ep = cfg.storage.endpoint_url
    manifest = ckpt.read_manifest(source["uri"], ep)
    ckpt.download(source["uri"], manifest, scratch, lambda rel: rel.startswith("policy/"), ep)
    return os.path.join(scratch, "policy")


@task(cache_policy=NO_CACHE)
def sample_and_score(cfg: SiirlConfig, model_dir: str) -> dict:
    """mean@n, pass@k, maj@n (sampled) and greedy accuracy on the task's held-out set."""
    from siirl_core.data import build_task
    from siirl_core.evaluation import evaluate_sampled, greedy_correct
    from siirl_core.models import load_tokenizer
    from siirl_core.rollout.base import SamplingConfig
    from siirl_core.rollout.engines import build_rollout_engine

    ev = cfg.evaluate
    tokenizer = load_tokenizer(model_dir)
    task_ = build_task(cfg.task, tokenizer)
    engine = build_rollout_engine(cfg, tokenizer, model_dir, cfg.evaluate.seed)
    problems = task_.eval_set()
    sampling = SamplingConfig(n=ev.n, temperature=ev.temperature, top_p=ev.top_p,
                              max_new_tokens=cfg.rollout.max_new_tokens)
    results = {}
    for source, (scores, count) in evaluate_sampled(engine, tokenizer, task_, problems, sampling, ev.pass_k,
                                                    ev.seed).items():
        mine = [p for p in problems if (p.data_source or task_.name) == source]
        scores["greedy"] = greedy_correct(engine, tokenizer, task_, mine, cfg.rollout.max_new_tokens) / count
        results.update({f"val/{source}/{k}": v for k, v in scores.items()})
        results[f"val/{source}/prompts"] = count
    return results


def results_name(cfg: SiirlConfig) -> str:
    """One file per task and sampling setting, so different evaluations sit side by side."""
    d = to_dict(cfg)
    key = hashlib.sha256(json.dumps([d["task"], d["evaluate"], d["rollout"]["max_new_tokens"]],
                                    sort_keys=True).encode()).hexdigest()[:8]
    return f"{cfg.task.name}-n{cfg.evaluate.n}-{key}.json"


@task(cache_policy=NO_CACHE)
def save_results(cfg: SiirlConfig, source: dict, results: dict) -> str:
    """`<source>/evaluations/<task>-n<N>-<key>.json`: beside the checkpoint's files (not in
    its manifest, so the checkpoint stays complete), removed with it by retention."""
    d = to_dict(cfg)
    record = {"source": source, "results": results, "task": d["task"], "evaluate": d["evaluate"],
              "max_new_tokens": cfg.rollout.max_new_tokens}
    uri = write_whole(join(source["uri"], "evaluations"), results_name(cfg),
                      json.dumps(record, indent=1, sort_keys=True).encode(), cfg.storage.endpoint_url,
                      cfg.storage.retries, cfg.storage.retry_backoff_s)
    get_run_logger().info("evaluation results written to %s", uri)
    return uri
