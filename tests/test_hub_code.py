"""No code from a model hub runs unless a config opts in: transformers' Hub kernels, bitsandbytes' Hub kernel and a
model directory's own code stay off in every process (Ray workers: test_ray_backend; Flower parties: test_flower)."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from fedlit.hub_code import HubCodeRefused, apply_hub_code_policy, hub_code_allowed
from fedlit.models import ModelConfig, load_base_model

# A run in a fresh process whose every network connection is recorded and refused (the Hub offline), started with
# transformers' Hub kernels switched on in its environment.
OFFLINE_RUN = """
import json, socket, sys
attempts = []
def refuse(self, address):
    attempts.append(str(address))
    raise OSError("offline")
socket.socket.connect = refuse
from fedlit.cli import main
try:
    main(sys.argv[1:])
except SystemExit as exit:
    assert not exit.code, exit.code
import bitsandbytes  # noqa: F401 - (peft imported it: its CPU backend asks the Hub for a kernel on import)
from transformers.integrations.hub_kernels import _kernels_enabled
from fedlit.hub_code import hub_code_allowed
print(json.dumps({"transformers_kernels": _kernels_enabled(), "hub_code": hub_code_allowed(), "attempts": attempts}))
"""


def test_a_run_attempts_no_hub_access_and_has_hub_kernels_off(tmp_path, tiny_model_dir, plays_jsonl):
    from test_cli import shipped_config_args

    args = shipped_config_args(Path(__file__).parent.parent / "configs" / "quickstart.yaml", tmp_path, tiny_model_dir,
                               plays_jsonl)
    env = {**{k: v for k, v in os.environ.items() if k != "FEDLIT_HUB_CODE"}, "USE_HUB_KERNELS": "YES",
           "HF_HUB_OFFLINE": "0"}
    done = subprocess.run([sys.executable, "-c", OFFLINE_RUN, *args], env=env, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    seen = json.loads(done.stdout.strip().splitlines()[-1])
    assert seen == {"transformers_kernels": False, "hub_code": False, "attempts": []}


def test_the_switch_turns_transformers_kernels_and_the_kernels_fetchers_on_and_off():
    import kernels

    try:
        apply_hub_code_policy(True)
        assert hub_code_allowed() and os.environ["USE_HUB_KERNELS"] == "YES"
        assert not getattr(kernels.get_kernel, "refuses_hub_code", False)
    finally:
        apply_hub_code_policy(False)
    assert not hub_code_allowed() and os.environ["USE_HUB_KERNELS"] == "NO"
    with pytest.raises(HubCodeRefused, match=r"kernels.get_kernel\('kernels-community/rotary'\): code from the Hub is "
                                             r"off in fedlit \(model.hub_code: false\)"):
        kernels.get_kernel("kernels-community/rotary", version=2)


def test_a_model_directory_s_own_code_runs_only_when_the_config_opts_in(tmp_path, tiny_model_dir):
    model_dir = tmp_path / "model"
    shutil.copytree(tiny_model_dir, model_dir)
    config = json.loads((model_dir / "config.json").read_text())
    config["auto_map"] = {"AutoModelForCausalLM": "remote.RemoteModel"}
    (model_dir / "config.json").write_text(json.dumps(config))
    marker = tmp_path / "remote-code-ran"
    (model_dir / "remote.py").write_text(f"open({str(marker)!r}, 'w').close()\n"
                                         "from transformers import LlamaForCausalLM\n\n\n"
                                         "class RemoteModel(LlamaForCausalLM):\n    pass\n")
    model = load_base_model(ModelConfig(str(model_dir)))
    assert type(model).__name__ == "LlamaForCausalLM" and not marker.exists()  # transformers' own class
    try:
        assert type(load_base_model(ModelConfig(str(model_dir), hub_code=True))).__name__ == "RemoteModel"
        assert marker.exists()
    finally:
        apply_hub_code_policy(False)
