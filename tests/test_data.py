import json

import pytest
import torch
from transformers import AutoTokenizer

from fedlit.data import IGNORE_INDEX, CausalLMCollator, DataConfig, build_federated_data, load_records


@pytest.fixture(scope="module")
def tokenizer(tiny_model_dir):
    return AutoTokenizer.from_pretrained(tiny_model_dir)


def config(path, **overrides):
    base = dict(source=str(path), num_clients=3, val_examples_per_client=4, global_val_examples=6,
                batch_size=4, max_length=32)
    return DataConfig(**{**base, **overrides})


def test_natural_split_is_disjoint_complete_and_seeded(plays_jsonl, tokenizer):
    data = build_federated_data(config(plays_jsonl), tokenizer)
    assert sorted(data.clients) == ["alpha", "beta", "gamma"]
    for module in data.clients.values():
        # 40 records per play: 4 own held-out, 2 to the global split, 34 to train.
        assert (len(module.train_dataset), len(module.val_dataset)) == (34, 4)
    assert len(data.global_val.val_dataset) == 6
    again = build_federated_data(config(plays_jsonl), tokenizer)
    assert again.clients["beta"].train_dataset["input_ids"] == data.clients["beta"].train_dataset["input_ids"]
    other_seed = build_federated_data(config(plays_jsonl, seed=1), tokenizer)
    assert other_seed.clients["beta"].val_dataset["input_ids"] != data.clients["beta"].val_dataset["input_ids"]


def test_examples_end_with_eos_and_respect_max_length(plays_jsonl, tokenizer):
    data = build_federated_data(config(plays_jsonl, max_length=8), tokenizer)
    for ids in data.clients["alpha"].train_dataset["input_ids"]:
        assert len(ids) <= 8 and ids[-1] == tokenizer.eos_token_id


def test_collator_masks_padding_only():
    batch = CausalLMCollator(pad_token_id=0)([{"input_ids": [5, 6, 0]}, {"input_ids": [7]}])
    assert batch["input_ids"].tolist() == [[5, 6, 0], [7, 0, 0]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]
    assert batch["labels"].tolist() == [[5, 6, 0], [7, IGNORE_INDEX, IGNORE_INDEX]]
    assert batch["labels"].dtype == torch.long


def test_client_choice_by_size_and_cap(tmp_path, tokenizer):
    path = tmp_path / "d.jsonl"
    rows = [{"play": p, "character": "A", "text": "x"} for p, n in (("big", 30), ("mid", 20), ("small", 12))
            for _ in range(n)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    data = build_federated_data(config(path, num_clients=2, train_examples_per_client=5), tokenizer)
    assert sorted(data.clients) == ["big", "mid"]
    assert all(len(m.train_dataset) == 5 for m in data.clients.values())


@pytest.mark.parametrize("overrides, error, message", [
    ({"source": "/no/such/file.jsonl"}, FileNotFoundError, "no such file or directory '/no/such/file.jsonl'"),
    ({"client_column": "speaker"}, KeyError, "client_column 'speaker' is not a column"),
    ({"clients": ["alpha", "omega"]}, KeyError, r"no records with play = \['omega'\]"),
    ({"template": "{speaker}: {text}"}, KeyError, "template uses column 'speaker'"),
    ({"val_examples_per_client": 40}, ValueError, "client 'alpha' has no training records"),
])
def test_bad_data_config_errors_name_the_problem(plays_jsonl, tokenizer, overrides, error, message):
    with pytest.raises(error, match=message):
        build_federated_data(config(plays_jsonl, **overrides), tokenizer)


def test_load_records_file_types(tmp_path):
    (tmp_path / "d.csv").write_text("play,character,text\na,B,hello\n")
    assert load_records(str(tmp_path / "d.csv"))[0] == {"play": "a", "character": "B", "text": "hello"}
    (tmp_path / "d.xml").write_text("<x/>")
    with pytest.raises(ValueError, match="unsupported file type '.xml'"):
        load_records(str(tmp_path / "d.xml"))


def test_dirichlet_partition_through_data_config(plays_jsonl, tokenizer):
    data = build_federated_data(config(plays_jsonl, partition="dirichlet", num_clients=4, alpha=0.3,
                                       label_column="play", val_examples_per_client=2, global_val_examples=4,
                                       seed=5), tokenizer)
    assert sorted(data.clients) == ["client-000", "client-001", "client-002", "client-003"]
    assert data.label_names == ["alpha", "beta", "gamma"]
    assert data.label_counts.sum() == 120 and data.label_counts.sum(axis=0).tolist() == [40, 40, 40]
    for (client_id, module), counts in zip(data.clients.items(), data.label_counts, strict=True):
        assert len(module.train_dataset) + len(module.val_dataset) + 1 == counts.sum(), client_id


def test_unknown_partitioner_and_label_column_are_named(plays_jsonl, tokenizer):
    with pytest.raises(KeyError, match="data.label_column 'genre' is not a column"):
        build_federated_data(config(plays_jsonl, partition="shards", label_column="genre"), tokenizer)


def test_partition_report_files(plays_jsonl, tokenizer, tmp_path):
    from PIL import Image

    from fedlit.data.partition_report import write_partition_report

    data = build_federated_data(config(plays_jsonl, partition="iid", num_clients=3), tokenizer)
    write_partition_report(data, tmp_path)
    rows = (tmp_path / "partition.csv").read_text().splitlines()
    assert rows[0] == "client,train,val,total,label:alpha,label:beta,label:gamma"
    assert len(rows) == 4 and rows[1].startswith("client-000,34,4,40,")
    with Image.open(tmp_path / "partition.png") as image:
        assert image.format == "PNG" and image.size[0] > 100


def test_instruction_format_masks_the_prompt(plays_jsonl, tokenizer):
    data = build_federated_data(config(plays_jsonl, prompt_template="Who speaks: {text}\nAnswer:",
                                       response_template=" {character}", max_length=64), tokenizer)
    module = data.clients["alpha"]
    example = module.val_dataset[0]
    answer_start = next(i for i, label in enumerate(example["labels"]) if label != IGNORE_INDEX)
    prompt = tokenizer.decode(example["input_ids"][:answer_start])
    answer = tokenizer.decode(example["labels"][answer_start:])
    assert prompt.startswith("Who speaks: ") and prompt.endswith("Answer:")
    assert answer.startswith(" SPEAKER") and answer.endswith("<eos>")
    assert all(label == IGNORE_INDEX for label in example["labels"][:answer_start])
    batch = next(iter(module.val_dataloader()))
    assert (batch["labels"][batch["attention_mask"] == 0] == IGNORE_INDEX).all()


def test_chat_template_wraps_prompt_as_user_turn(plays_jsonl, tokenizer):
    tokenizer = tokenizer.__class__.from_pretrained(tokenizer.name_or_path)
    tokenizer.chat_template = ("{% for m in messages %}[{{ m['role'] }}] {{ m['content'] }}\n{% endfor %}"
                               "{% if add_generation_prompt %}[assistant] {% endif %}")
    data = build_federated_data(config(plays_jsonl, prompt_template="{text}", response_template="{character}",
                                       chat_template=True, max_length=64), tokenizer)
    example = data.clients["beta"].val_dataset[0]
    start = next(i for i, label in enumerate(example["labels"]) if label != IGNORE_INDEX)
    assert tokenizer.decode(example["input_ids"][:start]).startswith("[user] ")
    assert tokenizer.decode(example["input_ids"][:start]).endswith("[assistant] ")


def test_long_prompts_lose_their_start_not_the_answer(plays_jsonl, tokenizer):
    data = build_federated_data(config(plays_jsonl, prompt_template="{text} {text} {text} {text}",
                                       response_template="{character}", max_length=12), tokenizer)
    for example in data.clients["gamma"].train_dataset:
        assert len(example["input_ids"]) == 12
        assert tokenizer.decode([t for t in example["labels"] if t != IGNORE_INDEX]).startswith("SPEAKER")


def test_packing_fills_blocks_and_keeps_every_token(plays_jsonl, tokenizer):
    plain = build_federated_data(config(plays_jsonl, max_length=16), tokenizer)
    packed = build_federated_data(config(plays_jsonl, max_length=16, packing=True), tokenizer)
    tokens = [t for seq in plain.clients["alpha"].train_dataset["input_ids"] for t in seq]
    blocks = packed.clients["alpha"].train_dataset["input_ids"]
    assert [t for block in blocks for t in block] == tokens
    assert all(len(block) == 16 for block in blocks[:-1])
    assert packed.clients["alpha"].val_dataset["input_ids"] == plain.clients["alpha"].val_dataset["input_ids"]


def test_tokenisation_is_cached_by_datasets(plays_jsonl, tokenizer):
    first = build_federated_data(config(plays_jsonl), tokenizer).clients["alpha"].train_dataset
    second = build_federated_data(config(plays_jsonl), tokenizer).clients["alpha"].train_dataset
    assert first.cache_files and first.cache_files == second.cache_files


def test_keep_filters_records(plays_jsonl, tokenizer):
    data = build_federated_data(config(plays_jsonl, keep={"play": ["alpha", "gamma"]}, num_clients=2), tokenizer)
    assert sorted(data.clients) == ["alpha", "gamma"]
    with pytest.raises(ValueError, match=r"data.keep: no records with play in \['omega'\]"):
        build_federated_data(config(plays_jsonl, keep={"play": ["omega"]}), tokenizer)
    with pytest.raises(KeyError, match="data.keep 'genre' is not a column"):
        build_federated_data(config(plays_jsonl, keep={"genre": ["x"]}), tokenizer)


def test_save_to_disk_directory_and_offline_hub_name(tmp_path):
    from datasets import Dataset

    Dataset.from_dict({"play": ["a"], "character": ["B"], "text": ["hi"]}).save_to_disk(str(tmp_path / "saved"))
    assert load_records(str(tmp_path / "saved"))[0] == {"play": "a", "character": "B", "text": "hi"}
    with pytest.raises(FileNotFoundError, match="'nobody/no-such-dataset' is not a local file or directory"):
        load_records("nobody/no-such-dataset")


def test_leaf_split_one_client_per_role_of_a_play(tmp_path, tokenizer, caplog):
    """Clients by (play, character): a SERVANT of two plays is two clients; roles with fewer than
    min_examples_per_client records are dropped with a count; num_clients null keeps every other role."""
    import logging

    path = tmp_path / "roles.jsonl"
    rows = [{"play": play, "character": role, "text": f"{role} of {play} speaks, turn {i}."}
            for play, role, n in (("hamlet", "HAMLET", 12), ("hamlet", "SERVANT", 10), ("macbeth", "SERVANT", 9),
                                  ("macbeth", "PORTER", 3)) for i in range(n)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    leaf = config(path, client_column=["play", "character"], num_clients=None, min_examples_per_client=5,
                  val_examples_per_client=2, global_val_examples=3, label_column="play")
    with caplog.at_level(logging.WARNING, logger="fedlit.data.federated"):
        data = build_federated_data(leaf, tokenizer)
    assert sorted(data.clients) == ["hamlet:HAMLET", "hamlet:SERVANT", "macbeth:SERVANT"]
    assert "dropped 1 of 4 clients with fewer than 5 records" in caplog.text
    sizes = {cid: len(m.train_dataset) + len(m.val_dataset) + 1 for cid, m in data.clients.items()}
    assert sizes == {"hamlet:HAMLET": 12, "hamlet:SERVANT": 10, "macbeth:SERVANT": 9}  # 1 each to the global split
    assert data.label_names == ["hamlet", "macbeth"] and data.label_counts.tolist() == [[12, 0], [10, 0], [0, 9]]
    with pytest.raises(ValueError, match="the iid partition needs a number of clients"):
        config(path, partition="iid", num_clients=None)
