"""Experiment scripts' ``--smoke`` modes: each runs end to end on tiny shapes, so none rots outside the suite."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

EXPERIMENTS = Path(__file__).parent.parent / "experiments"


def smoke(script: str, tmp_path: Path, *extra: str) -> dict:
    out = tmp_path / f"{script}.json"
    done = subprocess.run([sys.executable, str(EXPERIMENTS / script), "--smoke", "--json", str(out), *extra],
                          cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(out.read_text())


@pytest.mark.long
def test_bench_overhead_floor_smoke(tmp_path):
    results = smoke("bench_overhead.py", tmp_path)
    assert results["clients"] == 4
    for key in ("fit_s", "evaluate_s", "server_s_per_round"):
        assert 0 < results[key] < 5, (key, results)


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
