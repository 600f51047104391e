"""A party's base model loads once per run: with ``model-host`` in its node config, fits and evaluations run in a
long-lived actor on the party's own Ray instance instead of in the process Flower starts for each message. Three
SuperNodes over TLS with node authentication, secure aggregation, two rounds: bit-identical to LocalBackend, and
each party's ``model-loads.log`` holds one build. (The same deployment without a model host: the default suite's
one round in the clear, and the long suite's runs in tests/test_flower.py.)"""

from __future__ import annotations

import json

import pytest

pytest.importorskip("flwr")
pytest.importorskip("ray")

from conftest import PLAYS  # noqa: E402
from deployment import LocalDeployment  # noqa: E402
from test_flower import assert_same_run, fedhomo, party_files, run_locally, server_config  # noqa: E402

pytestmark = [pytest.mark.deployment, pytest.mark.deployment_long]


@pytest.fixture(scope="module")
def hosted(tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("hosted")
    deployment = LocalDeployment(root, party_files(root))
    deployment.start_ray_head()
    yield deployment.start()
    deployment.stop()


def test_each_party_loads_its_model_once_per_run_and_the_run_matches_local_backend(hosted, tiny_model_dir,
                                                                                     plays_jsonl):
    settings = fedhomo(tiny_model_dir)  # secure aggregation, 2 rounds: every party fits and evaluates 3 times
    config = server_config(hosted.root, "hosted", settings)
    assert hosted.deploy(config).wait(timeout=900) == 0, hosted.log("deploy")[-3000:]
    assert_same_run(hosted.root / "hosted", run_locally("fit", settings, hosted.root / "local", plays_jsonl))
    for play in PLAYS:
        builds = (hosted.root / "state" / play / "model-loads.log").read_text().splitlines()
        assert len(builds) == 1, builds
    record = json.loads((hosted.root / "hosted" / "deployment.json").read_text())
    assert sorted(record["parties"]) == sorted(PLAYS)
    assert record["client_secrets_in_server_process"] == 0  # every copy counted as it is made, the whole run
