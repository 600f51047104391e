"""Experiment scripts' ``--smoke`` modes: each runs end to end on tiny shapes, so none rots outside the suite."""

import json
import math
import runpy
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).parent.parent
EXPERIMENTS = REPO / "experiments"


def smoke(script: str, tmp_path: Path, *extra: str, cwd: Path | None = None) -> dict:
    """``script --smoke`` in a fresh process (for the scripts that patch torch, start Ray or set thread counts)."""
    out = tmp_path / f"{script}.json"
    done = subprocess.run([sys.executable, str(EXPERIMENTS / script), "--smoke", "--json", str(out), *extra],
                          cwd=cwd or tmp_path, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(out.read_text())


def in_process(script: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, *extra: str) -> dict:
    """``script --smoke`` run in this process as ``python experiments/<script>`` from the checkout would run it (a
    fresh interpreter would spend most of a smoke importing)."""
    out = tmp_path / f"{script}.json"
    monkeypatch.chdir(REPO)
    monkeypatch.syspath_prepend(str(EXPERIMENTS))
    monkeypatch.setattr(sys, "argv", [script, "--smoke", "--json", str(out), *extra])
    threads = torch.get_num_threads()
    try:
        runpy.run_path(str(EXPERIMENTS / script), run_name="__main__")
    finally:
        torch.set_num_threads(threads)
    return json.loads(out.read_text())


def table_smoke(script: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict:
    """A table script on its shipped config, shrunk to the tiny model."""
    return in_process(script, tmp_path, monkeypatch, "--output-dir", str(tmp_path / "out"))


@pytest.mark.long
def test_bench_overhead_floor_smoke(tmp_path):
    results = smoke("bench_overhead.py", tmp_path)
    assert results["clients"] == 4
    for key in ("fit_s", "evaluate_s", "server_s_per_round"):
        assert 0 < results[key] < 5, (key, results)


@pytest.mark.long  # (spawned ranks import everything again: ~15 s; the forked ones run in test_multi_device.py)
def test_bench_multi_device_smoke(tmp_path):
    results = smoke("bench_multi_device.py", tmp_path, "--output-dir", str(tmp_path / "out"),
                    "--strategy.init_args.clients_per_round", "1", cwd=REPO)  # (one spawned fit: ~17 s here)
    assert list(results) == ["1 device", "2 ranks, forked", "2 ranks, spawned"]
    assert all(found["fits"] == 1 and found["fit_s"] > 0 for found in results.values())


@pytest.mark.deployment_long  # (a SuperLink, three SuperNodes and a Ray instance: minutes, as the other deployments)
def test_bench_deployment_smoke(tmp_path):
    pytest.importorskip("flwr")
    pytest.importorskip("ray")
    (result,) = smoke("bench_deployment.py", tmp_path, "--workdir", str(tmp_path))["results"]
    hosted, local = result["hosted"], result["local"]
    assert len(local["round_s"]) == len(hosted["round_s"]) == 2 and all(s > 0 for s in hosted["round_s"])
    assert len(hosted["fit_message_overhead_s"]) == 2 and all(s > 0 for s in hosted["fit_message_overhead_s"])


@pytest.mark.parametrize("backend", ["local", pytest.param("ray", marks=pytest.mark.long)])
def test_gpu_bench_smoke(tmp_path, backend):
    pytest.importorskip("ray") if backend == "ray" else None
    results = smoke("gpu_bench.py", tmp_path, "--backends", backend)
    (row,) = results["settings"]
    assert row["backend"] == backend and row["tokens_per_s"] > 0 and row["wall_per_round_s"] > 0
    assert row["host_to_device_bytes_per_round"] == 0  # (on the CPU nothing crosses to a device)


@pytest.mark.long
def test_bench_backends_smoke(tmp_path):
    pytest.importorskip("ray")
    results = smoke("bench_backends.py", tmp_path)["shared_base"]
    assert set(results) == {"LocalBackend", "RayBackend, 2 x 1 CPU"}
    assert all(r["tree_pss_gib"] > 0 and r["seconds"] > 0 for r in results.values())


def test_bench_secagg_smoke(tmp_path):
    results = smoke("bench_secagg.py", tmp_path)
    assert [(r["graph"], r["dropout_fraction"]) for r in results["rows"]] == [
        ("SecAgg+ k=2", 0.0), ("SecAgg+ k=2", 0.1), ("SecAgg (all pairs)", 0.0), ("SecAgg (all pairs)", 0.1)]
    assert all(r["client_mask_s"] > 0 and r["bytes_sent_per_client"] > r["plain_bytes_per_client"]
               for r in results["rows"])
    assert {r["implementation"] for r in results["flower_rows"]} == {"fedlit", "Flower SecAggPlusWorkflow"}
    assert results["keystream_gb_per_s"] > 0


def finite(*values: float) -> bool:
    return all(math.isfinite(v) for v in values)


@pytest.mark.parametrize("script, rows", [
    ("fedhetero_table.py", ["untrained mentee adapter (round 0)", "federated (FedAvg)",
                            "local-only (mean over clients)"]),
    ("shakespeare_task.py", ["zero-shot (base model)", "FedAvg", "FedAdam (server_lr 0.003)",
                             "local-only (mean over clients)", "centralised (union of data, 2 steps per round)"]),
])
def test_task_tables_smoke(tmp_path, script, rows, monkeypatch):
    results = table_smoke(script, tmp_path, monkeypatch)
    assert list(results["results"]) == rows
    assert set(results["local_per_client"]) == {"client-000", "client-001"}
    assert all(finite(*scores.values()) for scores in results["results"].values())


def test_drift_table_smoke(tmp_path, monkeypatch):
    results = table_smoke("drift_table.py", tmp_path, monkeypatch)
    assert list(results["results"]) == ["zero-shot (round 0)", "FedAvg", "FedProx (mu 0.01)", "SCAFFOLD"]
    assert all(finite(*scores.values()) for scores in results["results"].values())
    scaffold, fedavg = results["results"]["SCAFFOLD"], results["results"]["FedAvg"]
    assert scaffold["bytes_per_fit"] > 1.5 * fedavg["bytes_per_fit"]  # the variates travel beside the adapter


def test_preference_table_smoke(tmp_path, monkeypatch):
    results = table_smoke("preference_table.py", tmp_path, monkeypatch)
    assert list(results["results"]) == ["base model (round 0)", "federated DPO (FedAvg)",
                                        "local-only DPO (mean over clients)",
                                        "SFT on the chosen answers (FedAvg), then nothing"]
    assert all(finite(*scores.values()) for scores in results["results"].values())
    assert results["results"]["base model (round 0)"]["reward_accuracy"] == 0.0  # (the adapter at zero: ties)


def test_hetero_rank_table_smoke(tmp_path, monkeypatch):
    results = table_smoke("hetero_rank_table.py", tmp_path, monkeypatch)
    rows = results["results"]
    assert list(rows) == ["ranks [4, 8, 16, 32], FlexLoRA (SVD)", "ranks [4, 8, 16, 32], HetLoRA (zero-padding)",
                          "every client at rank 8, FedAvg"]
    assert all(finite(row["loss"], row["perplexity"]) for row in rows.values())
    mixed, uniform = rows["ranks [4, 8, 16, 32], FlexLoRA (SVD)"], rows["every client at rank 8, FedAvg"]
    assert mixed["adapter_bytes"] == pytest.approx(uniform["adapter_bytes"] * 15 / 8)  # mean rank 15 vs 8


def test_fedco_table_smoke(tmp_path, monkeypatch):
    results = table_smoke("fedco_table.py", tmp_path, monkeypatch)
    assert list(results["slm"]) == ["SLM as given to clients (round 0)", "local-only (mean over clients)",
                                    "FedAvg only", "FedCoLLM"]
    assert list(results["llm"]) == ["before (round 0)", "after FedCoLLM"]
    assert all(finite(*scores.values()) for scores in [*results["slm"].values(), *results["llm"].values()])


def test_fedmkt_table_smoke(tmp_path, monkeypatch):
    results = table_smoke("fedmkt_table.py", tmp_path, monkeypatch)
    assert list(results["llm"]) == ["before (round 0)", "after FedMKT"]
    assert set(results["seconds"]) == {"standalone", "LLM-to-SLM", "FedMKT"}
    assert all(sent > 0 for sent in results["bytes_sent_per_client_round"])


def test_fedost_table_smoke(tmp_path, monkeypatch):
    results = table_smoke("fedost_table.py", tmp_path, monkeypatch)
    assert list(results) == ["0.5 of the middle", "0.5 of the middle, distilled 1 steps"]
    assert all(row["bytes_per_client_per_round"] > 0 for row in results.values())


def test_privacy_table_smoke(tmp_path, monkeypatch):
    results = table_smoke("privacy_table.py", tmp_path, monkeypatch)
    assert list(results["rows"]) == ["no DP", "zero-shot (round 0)", "DP, sigma 1"]
    assert results["clip_norm"] > 0 and finite(*results["update_norms"])


def test_bench_evaluation_smoke(tmp_path, monkeypatch):
    results = in_process("bench_evaluation.py", tmp_path, monkeypatch)
    assert results["examples"] == 4 and results["median_seconds"] > 0
    assert finite(results["metrics"]["loss"]) and results["metrics"]["perplexity"] > 1


def test_build_shakespeare_slm_smoke(tmp_path, monkeypatch):
    results = in_process("build_shakespeare_slm.py", tmp_path, monkeypatch, "--output", str(tmp_path / "slm"))
    assert results["vocab_size"] == 300 and results["steps"] == 2 and finite(results["final_train_loss"])
    assert (tmp_path / "slm" / "config.json").is_file() and (tmp_path / "slm" / "tokenizer.json").is_file()


def test_watermark_table_smoke(tmp_path, monkeypatch):
    results = table_smoke("watermark_table.py", tmp_path, monkeypatch)
    assert list(results) == ["watermarked", "no watermark"]
    assert results["watermarked"]["sign_mean"] > results["no watermark"]["sign_mean"]  # 64 bits embedded in 1 step


def test_quantization_table_smoke(tmp_path, monkeypatch):
    results = table_smoke("quantization_table.py", tmp_path, monkeypatch)
    (nf4,) = results["quickstart/base"].values()
    assert finite(nf4["loss"], nf4["full_base_loss"]) and nf4["base_mib"] > 0
    compression = results["quickstart/compression"]
    assert compression["4-bit"]["bytes_per_client_round"] < compression["float32"]["bytes_per_client_round"]


def test_private_inference_table_smoke(tmp_path, monkeypatch):
    results = table_smoke("private_inference_table.py", tmp_path, monkeypatch)["results"]
    assert set(results) == {"which-play", "continuation"}
    for task in results.values():
        assert task["examples"] == 2 and list(task["rows"])[-2:] == ["epsilon 1", "epsilon inf"]
        assert task["rows"]["epsilon inf"]["changed"] == 0 and task["rows"]["epsilon 1"]["changed"] > 0
