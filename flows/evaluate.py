"""`siirl-evaluate`: sampled evaluation of a checkpoint or an HF model directory on a
task's held-out set (mean@n, pass@k, maj@n, greedy accuracy), as a Prefect markdown
artifact and a JSON file saved beside the source."""
from __future__ import annotations

import tempfile

from prefect import flow
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from rich.markdown import Markdown

from flows.progress import console
from flows.quiet import quiet
from flows.watcher import on_running
from siirl_core.compose import compose_config
from siirl_core.config_checks import single_policy_only
from tasks.evaluation import fetch_policy, resolve_source, sample_and_score, save_results


def _markdown(source: dict, results: dict, where: str) -> str:
    step = f" (step {source['step']})" if source["step"] is not None else ""
    rows = [f"| {k} | {v:.4f} |" if isinstance(v, float) else f"| {k} | {v} |" for k, v in results.items()]
    return "\n".join([f"## Evaluation of {source['uri']}{step}", "", "| metric | value |", "|---|---|", *rows,
                      "", f"Saved to `{where}`."])


@flow(name="siirl-evaluate", log_prints=True, on_running=[on_running])
def evaluate_flow(overrides: list[str] | None = None) -> dict:
    quiet()
    cfg = compose_config(list(overrides or []))  # fails here, before any model is loaded
    single_policy_only(cfg, "evaluate")
    source = resolve_source(cfg)
    with tempfile.TemporaryDirectory(prefix="siirl-eval-") as scratch:
        model_dir = fetch_policy(cfg, source, scratch)
        results = sample_and_score(cfg, model_dir)
    where = save_results(cfg, source, results)
    markdown = _markdown(source, results, where)
    console.print(Markdown(markdown))
    create_markdown_artifact(key="siirl-evaluation", markdown=markdown)
    create_table_artifact(key="siirl-evaluation-table", table=[{"metric": k, "value": v} for k, v in results.items()],
                          description=f"Evaluation of {source['uri']}")
    return {"source": source, "results": results, "saved_to": where}


if __name__ == "__main__":
    import sys

    evaluate_flow(sys.argv[1:])
