"""The siirl-train/default deployment reruns a crashed run (prefect.yaml's trigger), at
most max_crash_reruns times in a row. The e2e test in tests/e2e/test_deployment.py kills
a real deployment run and watches the rerun resume; these check the pieces by Prefect's
own parsing and rendering."""
import pytest
import yaml

from flows.train import CrashRerunLimit, train_flow
from tests.conftest import ROOT


def default_deployment() -> dict:
    with open(f"{ROOT}/prefect.yaml") as f:
        deployments = yaml.safe_load(f)["deployments"]
    [found] = [d for d in deployments if d["entrypoint"] == "flows/train.py:train_flow" and d["name"] == "default"]
    return found


def test_the_trigger_reruns_the_same_run_with_the_count_one_higher():
    from prefect.events import DeploymentTriggerTypes
    from prefect.server.events.actions import RunDeployment
    from prefect.utilities.schema_tools.hydration import HydrationContext, hydrate
    from pydantic import TypeAdapter

    deployment = default_deployment()
    [spec] = deployment["triggers"]
    trigger = TypeAdapter(DeploymentTriggerTypes).validate_python(spec)
    assert trigger.expect == {"prefect.flow-run.Crashed"}
    assert "siirl-rerun-on-crash" in deployment["tags"]
    assert deployment["parameters"]["crash_reruns"] == 0

    class CrashedRun:  # what the action's template context holds for the crashed flow run
        parameters = {"overrides": ["trainer.steps=20", "run_name=exp2"], "crash_reruns": 1, "max_crash_reruns": 3}

    parameters = dict(trigger.parameters)
    RunDeployment._upgrade_v1_templates(parameters)
    rendered = hydrate(parameters, HydrationContext(render_jinja=True, jinja_context={"flow_run": CrashedRun()},
                                                    raise_on_error=True))
    assert rendered == {"overrides": ["trainer.steps=20", "run_name=exp2"], "crash_reruns": 2, "max_crash_reruns": 3}


def test_past_the_limit_the_rerun_stops_at_once_saying_why():
    with pytest.raises(CrashRerunLimit, match=r"crashed 4 times in a row \(max_crash_reruns=3\)"):
        train_flow.fn(["trainer.steps=1"], crash_reruns=4, max_crash_reruns=3)
