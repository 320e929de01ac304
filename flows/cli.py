"""`siirl train|sft|retrain|evaluate [hydra overrides]`, and `siirl runs` (flows/runs.py)."""
from __future__ import annotations

import os
import sys

COMMANDS = ("train", "sft", "retrain", "evaluate")
USAGE = ("usage: siirl {train,sft,retrain,evaluate} [key=value ...] [--verbose]   "
         "(Hydra overrides, e.g. trainer.steps=20 rollout=hf)\n"
         "       siirl runs [FOLDER] | siirl runs show RUN | siirl runs compare RUN_A RUN_B")


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["runs"]:
        from flows import runs

        return runs.main(argv[1:])
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in COMMANDS:
        print(USAGE, file=sys.stderr)
        return 0 if argv and argv[0] in ("-h", "--help") else 2
    command, overrides = argv[0], argv[1:]
    if "--verbose" in overrides:  # every library's output too (flows/quiet.py)
        overrides = [o for o in overrides if o != "--verbose"]
        os.environ["SIIRL_VERBOSE"] = "1"
    if "-h" in overrides or "--help" in overrides:
        from flows.cli_help import help_text

        print(help_text(command))
        return 0
    print_config = overrides[-2:] == ["--cfg", "job"]
    if print_config:
        overrides = overrides[:-2]
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    # Prefect's temporary server gets 20 s to start by default; on a loaded 2-core machine
    # it took longer once (seen while two test runs shared this machine).
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")
    from omegaconf import OmegaConf

    from flows.run_lock import RunFolderBusy, refuse_if_busy
    from siirl_core.compose import compose_config
    from siirl_core.config import ConfigError, to_dict
    from siirl_core.config_checks import make_run_dir, single_policy_only

    try:
        cfg = compose_config(overrides)  # validate before Prefect, Dask or any model starts
        if print_config:
            print(OmegaConf.to_yaml(to_dict(cfg)), end="")
            return 0
        if command in ("retrain", "evaluate"):
            single_policy_only(cfg, command)
        if command == "train":
            refuse_if_busy(make_run_dir(cfg), cfg.storage.uri)
    except ConfigError as err:
        print(f"siirl: configuration error: {err}", file=sys.stderr)
        return 2
    except RunFolderBusy as err:
        print(f"siirl: {err}", file=sys.stderr)
        return 2
    if command == "train":
        from flows.train import train_flow as run
    elif command == "sft":
        from flows.sft import sft_flow as run
    elif command == "retrain":
        from flows.retrain import retrain_flow as run
    else:
        from flows.evaluate import evaluate_flow as run
    from flows.quiet import quiet

    quiet()
    run(overrides)
    return 0


if __name__ == "__main__":
    sys.exit(main())
