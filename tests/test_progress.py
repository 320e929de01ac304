"""The end-of-run summary says what each accuracy measures (greedy held-out vs sampled
training), in the terminal and in the Prefect artifact."""
from flows.progress import summary_markdown


def test_summary_markdown_labels_greedy_and_sampled_accuracy():
    md = summary_markdown({"run_dir": "runs/default", "val_accuracy_before": 0.318, "val_accuracy_after": 0.656,
                           "last_train_accuracy": 0.41}).splitlines()
    assert md[:2] == ["| field | value | what |", "|---|---|---|"] and len(md) == 6
    assert md[2] == "| run_dir | runs/default |  |"
    assert md[3].startswith("| val_accuracy_before | 0.318 | greedy, held-out prompts, before training")
    assert md[5] == "| last_train_accuracy | 0.41 | sampled at rollout.temperature, the last step's training prompts |"
