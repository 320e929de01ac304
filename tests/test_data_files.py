"""verl-schema data files: loading, epoch shuffling that resumes, held-out rows,
length filtering, and errors that name the file, the row and the field."""
import logging

import pytest

from siirl_core.compose import compose_config
from siirl_core.config import ConfigError
from siirl_core.data import FileTask
from tests.data_files import arithmetic_rows, write_jsonl, write_parquet


@pytest.fixture
def files(tmp_path):
    return (write_jsonl(tmp_path / "train.jsonl", arithmetic_rows(40, "jsonl_src")),
            write_parquet(tmp_path / "train.parquet", arithmetic_rows(20, "parquet_src", chat=True, start=100)))


def test_jsonl_and_parquet_rows_load_with_their_fields(files):
    task = FileTask(list(files), val_files=[files[1]])
    first = task.train[0]
    assert (first.prompt, first.answer, first.data_source) == ("0+0=", "0", "jsonl_src")
    assert first.extra_info == {"index": 0} and first.uid == "train.jsonl:0"
    chat = task.train[40]  # chat messages without a chat template: the contents
    assert chat.prompt == "3+77=" and chat.data_source == "parquet_src"
    assert len(task.train) == 60 and len(task.eval_set()) == 20
    assert set(task.alphabet) == set("0123456789+=")


def test_epochs_cover_every_row_once_and_resume_in_order(files):
    task = FileTask([files[0]])  # no val files: one row in ten held out by hash
    n = len(task.train)
    assert 0 < len(task.heldout) < 40 and n + len(task.heldout) == 40
    assert not {p.prompt for p in task.train} & {p.prompt for p in task.heldout}
    size = 5
    epoch = [p.uid for step in range(1, 100) for p in task.train_batch(0, step, size)][:n]
    assert sorted(epoch) == sorted(p.uid for p in task.train)  # each row once per epoch
    # A resumed run asks for step 7 directly and gets what an uninterrupted one got.
    assert [p.uid for p in FileTask([files[0]]).train_batch(0, 7, size)] == \
        [p.uid for p in task.train_batch(0, 7, size)]
    assert [p.uid for p in task.train_batch(1, 1, n)] != [p.uid for p in task.train_batch(0, 1, n)]


def test_long_prompts_are_dropped_and_counted(tmp_path, caplog):
    rows = arithmetic_rows(10, "s") + [{"prompt": "1+" * 40 + "1=", "reward_model": {"ground_truth": "41"}}]
    path = write_jsonl(tmp_path / "mixed.jsonl", rows)
    with caplog.at_level(logging.WARNING, logger="siirl.data"):
        task = FileTask([path], val_files=[path], max_prompt_length=10)
    assert len(task.train) == 10
    assert "dropped 1 of 11 rows longer than task.max_prompt_length=10" in caplog.text


@pytest.mark.parametrize("row,message", [
    ({"data_source": "s", "reward_model": {"ground_truth": "1"}}, r"line 3: field 'prompt' is missing"),
    ({"prompt": "1+1=", "reward_model": {}}, r"line 3: field 'reward_model.ground_truth' is missing"),
    ({"prompt": [{"role": "user"}], "reward_model": {"ground_truth": "2"}}, r"line 3: field 'prompt' must be"),
    ({"prompt": "1+1=", "reward_model": {"ground_truth": "2"}, "extra_info": [1]},
     r"line 3: field 'extra_info' must be an object"),
])
def test_malformed_row_names_file_line_and_field(tmp_path, row, message):
    path = write_jsonl(tmp_path / "bad.jsonl", arithmetic_rows(2, "s") + [row])  # the 3rd line
    with pytest.raises(ConfigError, match=rf"bad.jsonl: {message}"):
        compose_config(["task=file", f"task.train_files=[{path}]"])


def test_unreadable_files_are_named(tmp_path):
    bad = tmp_path / "broken.jsonl"
    bad.write_text('{"prompt": "1+1=", "reward_model": {"ground_truth": "2"}}\n\n{not json\n')
    with pytest.raises(ConfigError, match=r"broken.jsonl: line 3: not valid JSON"):  # blank lines count
        compose_config(["task=file", f"task.train_files=[{bad}]"])
    with pytest.raises(ConfigError, match=r"missing.parquet: no such data file"):
        compose_config(["task=file", f"task.train_files=[{tmp_path}/missing.parquet]"])
    with pytest.raises(ConfigError, match=r"task.train_files is empty"):
        compose_config(["task=file"])


def test_chat_prompts_use_the_tokenizers_chat_template(tmp_path):
    from siirl_core.models.tokenizer import build_char_tokenizer

    tok = build_char_tokenizer("0123456789+=|")
    tok.chat_template = ("{% for m in messages %}|{{ m['content'] }}{% endfor %}"
                         "{% if add_generation_prompt %}|{% endif %}")
    path = write_parquet(tmp_path / "chat.parquet", arithmetic_rows(3, "chat", chat=True))
    task = FileTask([path], val_files=[path], tokenizer=tok)
    assert [p.prompt for p in task.train] == ["|0+0=|", "|1+7=|", "|2+14=|"]


def test_a_parquet_row_is_named_by_its_index(tmp_path):
    from tests.data_files import write_parquet

    rows = arithmetic_rows(3, "s")
    rows[1]["reward_model"] = {"other": 1}
    path = write_parquet(tmp_path / "bad.parquet", rows)
    with pytest.raises(ConfigError, match=r"bad.parquet: row 1: field 'reward_model.ground_truth' is missing"):
        compose_config(["task=file", f"task.train_files=[{path}]"])
