"""Private inference (InferDPT): the perturbation, its cache and inversion, both sides, and `fedlit infer`."""

from __future__ import annotations

import gc
import hashlib
import json
import math
import secrets
from pathlib import Path

import pytest
import torch
from scipy.stats import chisquare
from transformers import AutoModelForCausalLM, AutoTokenizer

from fedlit.backends import LocalBackend
from fedlit.cli import main
from fedlit.inference import GenerationServer, InferenceConfig, ModelSpec, Query, private_inference
from fedlit.inference.inference_client import InferenceApps
from fedlit.inference.perturbation import CandidateTable, candidate_table, usable_tokens


@pytest.fixture(scope="module")
def table(tiny_model_dir: Path):
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    embeddings = AutoModelForCausalLM.from_pretrained(tiny_model_dir).get_input_embeddings().weight.detach()
    return tokenizer, CandidateTable.build(embeddings, usable_tokens(tokenizer), k=8, chunk=50)


def test_the_filter_keeps_byte_level_word_tokens_and_drops_special_ones(table) -> None:
    tokenizer, candidates = table
    kept = set(candidates.tokens.tolist())
    assert tokenizer.eos_token_id not in kept
    word = tokenizer.convert_tokens_to_ids("Ġthe") if "Ġthe" in tokenizer.get_vocab() else None
    assert word is not None and word in kept  # a byte-level "Ġ" token decodes to " the"
    comma = tokenizer.convert_tokens_to_ids(",")
    assert comma not in kept  # punctuation is kept in place, never drawn


def test_one_tokens_draws_follow_the_exponential_mechanism(table) -> None:
    _, candidates = table
    token, epsilon = int(candidates.tokens[5]), 3.0
    ids, probabilities = candidates.probabilities(token, epsilon)
    row = candidates.row(token)
    expected = torch.exp(epsilon * candidates.scores[row].double() / 2)
    assert torch.allclose(probabilities, expected / expected.sum())
    generator = torch.Generator().manual_seed(0)
    draws = candidates.perturb([token] * 4000, epsilon, generator)
    counts = [draws.count(int(i)) for i in ids]
    assert sum(counts) == 4000
    assert chisquare(counts, (probabilities * 4000).tolist()).pvalue > 1e-3


def test_epsilon_infinity_keeps_the_prompt_and_zero_is_uniform(table) -> None:
    tokenizer, candidates = table
    ids = tokenizer("To be or not to be, that is the question.")["input_ids"]
    generator = torch.Generator().manual_seed(0)
    assert candidates.perturb(ids, math.inf, generator) == ids
    token = int(candidates.tokens[0])
    _, probabilities = candidates.probabilities(token, 0.0)
    assert torch.allclose(probabilities, torch.full_like(probabilities, 1 / len(probabilities)))
    with pytest.raises(ValueError, match="epsilon must be >= 0"):
        candidates.perturb(ids, -1.0, generator)


def test_the_candidate_table_is_built_once_then_read_back(tiny_model_dir: Path, tmp_path: Path, monkeypatch) -> None:
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    built = candidate_table(model, tokenizer, k=8, directory=tmp_path)
    (path,) = tmp_path.glob("*-k8.safetensors")
    monkeypatch.setattr(CandidateTable, "build", lambda *a, **k: pytest.fail("built again instead of read back"))
    again = candidate_table(model, tokenizer, k=8, directory=tmp_path)
    for name in ("tokens", "neighbours", "scores"):
        assert torch.equal(getattr(built, name), getattr(again, name))
    with pytest.raises(ValueError, match="built for"):
        CandidateTable.load(path, "another-model-k8")


def test_inversion_is_the_maximum_likelihood_original_of_each_draw(table) -> None:
    _, candidates = table
    for epsilon in (0.0, 2.0, 12.0):
        guess = candidates.inversion(epsilon)
        for observed in candidates.tokens[::7].tolist():  # brute force: every row that can draw it
            best, chosen = -1.0, None
            for token in candidates.tokens.tolist():
                ids, probabilities = candidates.probabilities(token, epsilon)
                hit = (ids == observed).nonzero()
                if len(hit):
                    p = float(probabilities[hit[0, 0]])
                    if p > best + 1e-12 or (abs(p - best) <= 1e-12 and token == observed):
                        best, chosen = p, token
            assert guess[observed] == chosen, (epsilon, observed)
    assert all(k == v for k, v in candidates.inversion(math.inf).items())


class RecordingServer(GenerationServer):
    """The server as the test inspects it: everything it received."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.received: list = []

    def answer(self, query):
        self.received.append(query)
        return super().answer(query)


PROMPTS = {"alice": ["SPEAKER0:\nthe king is dead and the queen", "what light is in the window"],
           "bob": ["to be or not to be that is the question"]}


def ask(model_dir: Path, directory: Path, backend, prompts: dict[str, list[str]]):
    """Every client's prompts through ``backend`` to a recording server on the tiny model; the replies, the server,
    the clients' answers files and the settings."""
    outputs = {c: str(directory / f"{c}.jsonl") for c in prompts}
    local = ModelSpec(model=str(model_dir))
    config = InferenceConfig(epsilon=1.0, candidates=8, max_new_tokens=5, answer_max_new_tokens=4,
                             table_dir=str(directory / "tables"))
    server = RecordingServer(*local.load())
    replies = private_inference(backend, InferenceApps(prompts, outputs, config, local), server, prompts)
    return replies, server, outputs, config


def test_the_clear_prompts_never_reach_the_server(tiny_model_dir: Path, tmp_path: Path) -> None:
    prompts = PROMPTS
    replies, server, outputs, config = ask(tiny_model_dir, tmp_path, LocalBackend(), prompts)
    model, tokenizer = server.model, server.tokenizer
    assert replies == {"alice": {"answers": 2}, "bob": {"answers": 1}}
    assert all(type(q) is Query for q in server.received)
    received = [p for q in server.received for p in q.prompts]
    clear = [p for c in prompts.values() for p in c]
    assert len(received) == 3 and not set(received) & set(clear)
    audit = {c: [json.loads(line) for line in Path(outputs[c]).read_text().splitlines()] for c in prompts}
    assert [r["sent"] for c in prompts for r in audit[c]] == received  # the audit records exactly what left
    assert [r["prompt"] for c in prompts for r in audit[c]] == clear
    rows = audit["alice"]  # the answer: the local model's greedy continuation of the extraction input, by hand
    inputs = tokenizer(config.extraction_template.format(sent=rows[0]["sent"], continuation=rows[0]["continuation"],
                                                         prompt=rows[0]["prompt"]), return_tensors="pt")
    by_hand = model.generate(**inputs, max_new_tokens=4, do_sample=False, pad_token_id=tokenizer.pad_token_id)
    assert rows[0]["answer"] == tokenizer.decode(by_hand[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True)


def test_fedlit_infer_writes_answers_and_refuses_bad_input_in_one_line(tiny_model_dir: Path, tmp_path: Path,
                                                                       capsys) -> None:
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text('{"prompt": "the king is dead"}\n"what light is in the window"\n')
    common = ["infer", "--prompts", str(prompts), "--server.model", str(tiny_model_dir), "--max_new_tokens", "4"]
    clear = tmp_path / "clear.jsonl"
    with pytest.raises(SystemExit) as done:
        main([*common, "--no_private", "--output", str(clear)])
    assert done.value.code == 0
    rows = [json.loads(line) for line in clear.read_text().splitlines()]
    assert [r["sent"] for r in rows] == ["the king is dead", "what light is in the window"]
    assert all(r["answer"] == r["continuation"] and r["epsilon"] is None for r in rows)
    private = [*common, "--local.model", str(tiny_model_dir), "--candidates", "8", "--epsilon", "inf",
               "--table_dir", str(tmp_path / "tables"), "--answer_max_new_tokens", "3"]
    with pytest.raises(SystemExit) as done:
        main([*private, "--output", str(tmp_path / "inf.jsonl")])
    assert done.value.code == 0  # epsilon inf: what leaves is the prompt itself (the no-noise end of the scale)
    assert [json.loads(line)["sent"] for line in (tmp_path / "inf.jsonl").read_text().splitlines()] == \
        [r["sent"] for r in rows]
    capsys.readouterr()
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "fine"}\n{"text": "no prompt key"}\n')
    for argv, message in [([*common, "--no_private", "--output", str(clear)], f"--output {clear} exists"),
                          ([*common, "--output", str(tmp_path / "x.jsonl")], "needs a local model"),
                          (["infer", "--prompts", str(bad), "--server.model", str(tiny_model_dir), "--output",
                            str(tmp_path / "y.jsonl"), "--no_private"], f"prompts file {bad} line 2"),
                          ([*common, "--prompts", str(tmp_path / "none.jsonl"), "--no_private", "--output",
                            str(tmp_path / "z.jsonl")], f"prompts file {tmp_path / 'none.jsonl'}: no such file")]:
        with pytest.raises(SystemExit) as failed:
            main(argv)
        err = capsys.readouterr().err.strip()
        assert failed.value.code == 1 and message in err and len(err.splitlines()) == 1, err
    assert not (tmp_path / "x.jsonl").exists() and not (tmp_path / "y.jsonl").exists()


def test_the_shipped_infer_config_runs(tiny_model_dir: Path, tmp_path: Path) -> None:
    config = Path(__file__).parent.parent / "configs" / "infer.yaml"
    output = tmp_path / "answers.jsonl"
    with pytest.raises(SystemExit) as done:
        main(["infer", "--config", str(config), "--server.adapter", "null", "--server.model", str(tiny_model_dir),
              "--local.model", str(tiny_model_dir), "--candidates", "8", "--table_dir", str(tmp_path),
              "--max_new_tokens", "3", "--answer_max_new_tokens", "2", "--prompt", "the king is dead",
              "--output", str(output)])
    assert done.value.code == 0
    (row,) = [json.loads(line) for line in output.read_text().splitlines()]
    assert row["prompt"] == "the king is dead" and row["epsilon"] == 6.0 and row["sent"] != row["prompt"]


class WatchingServer(RecordingServer):
    """Also looks, while it answers, for any clear prompt anywhere in its own process (by hash: the test keeps no
    copy of them)."""

    def __init__(self, clear_hashes: set[str], *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.clear_hashes, self.clear_seen = clear_hashes, 0

    def answer(self, query):
        texts = {ref for obj in gc.get_objects() for ref in gc.get_referents(obj) if isinstance(ref, str)
                 and 20 < len(ref) < 200}
        self.clear_seen += sum(hashlib.sha256(t.encode(errors="replace")).hexdigest() in self.clear_hashes
                               for t in texts)
        return super().answer(query)


def write_prompt_files(directory: Path) -> tuple[dict[str, str], set[str]]:
    """Each client's prompts in a file of its own (fresh text, so no copy lives in this test module); the paths and
    the prompts' hashes."""
    words = secrets.token_hex(4)
    prompts = {"alice": [f"the king {words} is dead and the queen", f"what light {words} is in the window"],
               "bob": [f"to be or not {words} to be that is the question"]}
    files = {}
    for client, texts in prompts.items():
        files[client] = str(directory / f"{client}-prompts.json")
        Path(files[client]).write_text(json.dumps(texts))
    return files, {hashlib.sha256(p.encode()).hexdigest() for texts in prompts.values() for p in texts}


def test_on_ray_the_clear_prompts_never_exist_where_the_servers_model_is(tiny_model_dir: Path, tmp_path: Path) -> None:
    """Prompt files read by each client in its Ray worker: while the server answers, no clear prompt exists in the
    driver, the process that holds the server's model (with LocalBackend they would: one process)."""
    ray = pytest.importorskip("ray")
    import sys

    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    from fedlit.backends import RayBackend

    files, clear = write_prompt_files(tmp_path)
    local = ModelSpec(model=str(tiny_model_dir))
    config = InferenceConfig(epsilon=1.0, candidates=8, max_new_tokens=5, answer_max_new_tokens=4,
                             table_dir=str(tmp_path / "tables"))
    server = WatchingServer(clear, *local.load())
    outputs = {c: str(tmp_path / f"{c}.jsonl") for c in files}
    try:
        replies = private_inference(RayBackend(num_workers=2), InferenceApps(files, outputs, config, local), server,
                                    files)
    finally:
        ray.shutdown()
    assert replies == {"alice": {"answers": 2}, "bob": {"answers": 1}}  # query and extract met the same worker
    assert server.clear_seen == 0 and len(server.received) == 2
    audit = [json.loads(line) for c in files for line in Path(outputs[c]).read_text().splitlines()]
    assert {hashlib.sha256(r["prompt"].encode()).hexdigest() for r in audit} == clear  # the workers had them
    assert sorted(r["sent"] for r in audit) == sorted(p for q in server.received for p in q.prompts)
    local_server = WatchingServer(clear, *local.load())  # the control: in one process the watch sees them
    private_inference(LocalBackend(), InferenceApps(files, {c: str(tmp_path / f"{c}-local.jsonl") for c in files},
                                                    config, local), local_server, files)
    assert local_server.clear_seen >= 2


def test_settings_that_cannot_work_are_refused_by_name() -> None:
    with pytest.raises(ValueError, match=r"extraction_template must contain \{continuation\}"):
        InferenceConfig(extraction_template="{prompt}")
    with pytest.raises(ValueError, match="epsilon must be >= 0"):
        InferenceConfig(epsilon=-1)
    with pytest.raises(ValueError, match="candidates must be >= 1"):
        InferenceConfig(candidates=0)


def test_a_prompt_too_long_for_the_model_is_refused_not_cut(tiny_model_dir: Path) -> None:
    local = ModelSpec(model=str(tiny_model_dir))
    server = GenerationServer(*local.load(), max_new_tokens=4)
    with pytest.raises(ValueError, match=r"text 1 has \d+ tokens: with 4 new tokens it exceeds the model's 128 "):
        server.answer(Query(["short", "the king is dead " * 60], 4))
