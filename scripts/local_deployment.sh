#!/usr/bin/env bash
# A whole deployment on localhost: a SuperLink, three parties' SuperNodes (each with its own Shakespeare play,
# written to its own file), a fedlit run across them (configs/deployment.yaml: FedHomoLLM with LoRA and secure
# aggregation on the default model), then everything torn down, whatever happens.
#   scripts/local_deployment.sh [--secure] [--tiny] [DIR]
# --secure: TLS on the SuperLink (a demo CA from scripts/make_certificates.sh) and SuperNode authentication with
#           per-party keys registered with the SuperLink.
# --tiny:   a tiny random-initialised model instead of SmolLM2-135M (seconds per round instead of minutes).
# DIR:      work directory (default outputs/local-deployment): party data, logs, certificates, the run's output.
set -euo pipefail
secure=false tiny=false dir=outputs/local-deployment
for arg in "$@"; do
    case $arg in
        --secure) secure=true ;;
        --tiny) tiny=true ;;
        -*) echo "unknown option $arg" >&2; exit 2 ;;
        *) dir=$arg ;;
    esac
done
bin=$(cd "$(dirname "$0")/.." && pwd)/.venv/bin
[ -x "$bin/flower-superlink" ] || { echo "needs Flower: make setup (or pip install 'fedlit[flower]')" >&2; exit 2; }
export PATH="$bin:$PATH" FLWR_HOME="$dir/flwr-home"
port=${FEDLIT_SUPERLINK_PORT:-9093}
parties=(hamlet macbeth othello)
mkdir -p "$dir/logs" "$FLWR_HOME"
dir=$(cd "$dir" && pwd)

pids=()
teardown() { for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap teardown EXIT INT TERM

echo "== party data: one play per party, each in its own file"
config=configs/deployment.yaml
python_args=("$dir" "$tiny" "${parties[@]}")
"$bin/python" - "${python_args[@]}" <<'PY'
import sys
from pathlib import Path

import yaml

from fedlit.data.sources import load_records

directory, tiny, parties = Path(sys.argv[1]), sys.argv[2] == "true", sys.argv[3:]
records = load_records("shakespeare")
for party in parties:
    data = directory / party / "data.jsonl"
    data.parent.mkdir(parents=True, exist_ok=True)
    records.filter(lambda play: play == party, input_columns="play").to_json(str(data))
    own = {"data": {"source": str(data), "client_column": "play", "num_clients": 1, "global_val_examples": 1}}
    (directory / party / "party.yaml").write_text(yaml.safe_dump(own))
config = yaml.safe_load(Path("configs/deployment.yaml").read_text())
config["output_dir"] = str(directory / "run")
if tiny:
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from fedlit.models import ModelConfig, load_tokenizer

    tokenizer = load_tokenizer(ModelConfig())
    model = LlamaForCausalLM(LlamaConfig(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128,
                                         num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2))
    model.save_pretrained(directory / "tiny-model")
    tokenizer.save_pretrained(directory / "tiny-model")
    config["model"] = {"name_or_path": str(directory / "tiny-model")}
(directory / "server.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
PY

tls=(--insecure) node_tls=(--insecure) deploy_tls=(--insecure true)
connection="address = \"127.0.0.1:$port\""$'\n'"insecure = true"
if $secure; then
    echo "== certificates (demo CA) and each party's authentication key"
    scripts/make_certificates.sh "$dir/certs" "${parties[@]}"
    tls=(--ssl-ca-certfile "$dir/certs/ca.crt" --ssl-certfile "$dir/certs/server.crt"
         --ssl-keyfile "$dir/certs/server.key" --enable-supernode-auth)
    node_tls=(--root-certificates "$dir/certs/ca.crt")
    deploy_tls=(--root_certificates "$dir/certs/ca.crt")
    connection="address = \"127.0.0.1:$port\""$'\n'"root-certificates = \"$dir/certs/ca.crt\""
fi
printf '[superlink]\ndefault = "local"\n[superlink.local]\n%s\n' "$connection" > "$FLWR_HOME/config.toml"

echo "== SuperLink on 127.0.0.1:$port (logs in $dir/logs)"
flower-superlink --port "$port" "${tls[@]}" --database "$dir/superlink.db" \
    --disable-runtime-dependency-installation > "$dir/logs/superlink.log" 2>&1 &
pids+=($!)
for _ in $(seq 100); do (echo > "/dev/tcp/127.0.0.1/$port") 2>/dev/null && break; sleep 0.2; done

i=0
for party in "${parties[@]}"; do
    auth=()
    if $secure; then
        flwr supernode register "$dir/certs/$party.pub" local > /dev/null
        auth=(--auth-supernode-private-key "$dir/certs/$party")
    fi
    echo "== SuperNode of party $party"
    flower-supernode --superlink "127.0.0.1:$port" "${node_tls[@]}" "${auth[@]}" --port $((port + 10 + i)) \
        --node-config "client-id=\"$party\" party-config=\"$dir/$party/party.yaml\"" \
        > "$dir/logs/$party.log" 2>&1 &
    pids+=($!)
    i=$((i + 1))
done

echo "== fedlit deploy"
fedlit deploy --config "$dir/server.yaml" --superlink "127.0.0.1:$port" --parties ${#parties[@]} "${deploy_tls[@]}"
echo "== done: metrics in $dir/run/metrics.csv, adapter in $dir/run/adapter"
