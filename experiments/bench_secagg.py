"""Secure aggregation cost: client masking, server unmasking and bytes, against plain FedAvg.

For each number of clients (default 10, 50, 100) and a 1M-parameter update, one in-process round of
SecAgg+ (10 neighbours per client) and of full SecAgg (every pair), without dropouts and with 10% of
the clients dropping after key exchange (their pair masks must then be recomputed by the server).

- keystream: AES-256-CTR mask expansion speed on one core (target >= 1 GB/s);
- client mask: one client's masking of its update (target < 50 ms with 10 neighbours);
- server unmask: removing the masks from the sum (stage 4), and per client: flat in n means the total
  grows as n (or n log n with k ~ log n neighbours) rather than n^2;
- bytes per client: everything the client sends in the protocol, and the ratio to plain FedAvg, which
  sends the float32 adapter once.

- ``--flower``: fedlit's SecAgg+ against Flower's own (``SecAggPlusWorkflow`` on the server, ``secaggplus_mod``
  on the clients) on the same update size, clients and neighbours, no dropouts, in one process: each side's
  messages as Flower record dicts (their serialized size is the bytes on the wire), CPU seconds of the client
  code (mean per client, masking included) and of the server code (everything else).

    python experiments/bench_secagg.py [--clients 10 50 100] [--params 1000000] [--json out.json]
    python experiments/bench_secagg.py --flower [--clients 10 20] [--params 1000000] [--json out.json]
    python experiments/bench_secagg.py --smoke          (both parts, tiny: the test suite)
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import time
from collections import Counter

import numpy as np
import torch
from rich.console import Console
from rich.table import Table

from fedlit.payload import Update, to_bytes
from fedlit.secure import SecureAggregationConfig, SecureRound
from fedlit.secure.messages import encode
from fedlit.secure.ring import MaskStream
from fedlit.strategies import FedAvg


def keystream_gb_per_s(length: int, bits: int) -> float:
    stream = MaskStream(length, bits)
    stream.keystream(os.urandom(32))  # warm-up
    began = time.perf_counter()
    repeats = 10
    for _ in range(repeats):
        stream.keystream(os.urandom(32))
    return repeats * length * stream.dtype.itemsize / (time.perf_counter() - began) / 1e9


def plain_fedavg(n: int, params: int) -> tuple[float, int]:
    """Server seconds to average n float32 updates, and the bytes one client sends."""
    updates = [Update(str(i), {"w": torch.randn(params)}, 100) for i in range(n)]
    began = time.perf_counter()
    FedAvg().aggregate({"w": torch.zeros(params)}, updates)
    return time.perf_counter() - began, len(to_bytes(updates[0].payload))


def secure_round(n: int, params: int, config: SecureAggregationConfig, drop: float) -> dict[str, float]:
    ids = [f"client-{i:03d}" for i in range(n)]
    dropped = ids[:: max(1, round(1 / drop))][: int(drop * n)] if drop else []
    secure = SecureRound(config, 1, ids, params, dropouts={"masked_input": dropped})
    rng = np.random.default_rng(0)
    began = time.perf_counter()
    live = secure.exchange_keys()
    key_exchange = (time.perf_counter() - began) / n
    mask_seconds = []
    for client_id in live:
        update = rng.normal(scale=0.01, size=params)
        began = time.perf_counter()
        masked = secure.clients[client_id].secagg.mask(update, 100)
        mask_seconds.append(time.perf_counter() - began)
        secure.submit(client_id, encode(masked))
    began = time.perf_counter()
    secure.finish()
    unmask = time.perf_counter() - began
    sent = [secure.bytes_sent[c] for c in secure.server.survivors]
    return {"key_exchange_s_per_client": key_exchange, "client_mask_s": float(np.median(mask_seconds)),
            "server_unmask_s": unmask, "bytes_sent_per_client": float(np.mean(sent))}


def _record_bytes(content) -> int:
    from flwr.common.serde import recorddict_to_proto

    return len(recorddict_to_proto(content).SerializeToString())


def fedlit_over_flower_records(n: int, params: int, neighbours: int, bits: int) -> dict[str, float]:
    """fedlit's SecAgg+ round, each request and reply wrapped as the Flower backend sends it."""
    from fedlit.backends.messages import FitIns, FitRes
    from fedlit.flower.envelope import request_content
    from fedlit.secure.client_endpoint import SecAggParty

    config = SecureAggregationConfig(bits=bits, scale=2.0**24 if bits > 32 else 2.0**12, clip=1.0,
                                     neighbours=neighbours)
    ids = [f"client-{i:03d}" for i in range(n)]
    parties = {c: SecAggParty(c, config) for c in ids}
    client_cpu, sent, received = Counter(), Counter(), Counter()

    def transport(method: str, requests: dict[str, bytes]) -> dict[str, bytes]:
        replies = {}
        for client_id, message in requests.items():
            received[client_id] += _record_bytes(request_content(method, message)[0])
            began = time.process_time()
            replies[client_id] = getattr(parties[client_id], method)(message)
            client_cpu[client_id] += time.process_time() - began
            sent[client_id] += _record_bytes(request_content(method, replies[client_id])[0])
        return replies

    rng = np.random.default_rng(0)
    updates = {c: rng.normal(scale=0.01, size=params) for c in ids}
    fit_request = _record_bytes(request_content("fit", FitIns(to_bytes({"w": torch.zeros(params)}), 0,
                                                              mods={"masking": {}}))[0])  # the global adapter, float32
    began = time.process_time()
    secure = SecureRound(config, 1, ids, params, transport=transport)
    for client_id in secure.exchange_keys():
        start = time.process_time()
        wire = encode(parties[client_id].secagg.mask(updates[client_id], 100))
        client_cpu[client_id] += time.process_time() - start
        received[client_id] += fit_request
        sent[client_id] += _record_bytes(request_content("fit", FitRes(wire, 0))[0])
        secure.submit(client_id, wire)
    secure.finish()
    total = time.process_time() - began
    return {"client_cpu_s": sum(client_cpu.values()) / n, "server_cpu_s": total - sum(client_cpu.values()),
            "bytes_sent_per_client": sum(sent.values()) / n, "bytes_received_per_client": sum(received.values()) / n}


def flower_secaggplus(n: int, params: int, neighbours: int) -> dict[str, float]:
    """Flower's SecAgg+: ``SecAggPlusWorkflow`` in a one-round ``DefaultWorkflow`` over an in-process grid whose
    nodes run a ``ClientApp`` with ``secaggplus_mod``."""
    from flwr.app import Context, Message, RecordDict
    from flwr.client import ClientApp, NumPyClient
    from flwr.client.mod import secaggplus_mod
    from flwr.common import ndarrays_to_parameters
    from flwr.common.serde import recorddict_from_proto, recorddict_to_proto
    from flwr.server import LegacyContext, ServerConfig
    from flwr.server.strategy import FedAvg as FlowerFedAvg
    from flwr.server.workflow import DefaultWorkflow, SecAggPlusWorkflow
    from flwr.serverapp.grid import Grid
    from flwr.supercore.run import Run
    from flwr.supercore.task_identity import TaskIdentity

    rng = np.random.default_rng(0)
    updates = {node: rng.normal(scale=0.01, size=params).astype(np.float32) for node in range(1, n + 1)}

    class Client(NumPyClient):
        def __init__(self, node: int) -> None:
            self.node = node

        def fit(self, parameters, config):
            return [updates[self.node]], 100, {}

    app = ClientApp(client_fn=lambda context: Client(context.node_id).to_client(), mods=[secaggplus_mod])
    client_cpu, sent, received = Counter(), Counter(), Counter()

    class InProcessGrid(Grid):
        def __init__(self) -> None:
            self.contexts = {node: Context(1, node, {}, RecordDict(), {}) for node in updates}
            self.replies, self.count = {}, 0
            self._run = Run.create_empty(1)

        def set_run(self, run_id: int) -> None:
            pass

        @property
        def run(self):
            return self._run

        def create_message(self, content, message_type, dst_node_id, group_id, ttl=None):
            return Message(content, dst_node_id=dst_node_id, message_type=message_type, group_id=group_id, ttl=ttl)

        def get_node_ids(self):
            return list(updates)

        def push_messages(self, messages):
            ids = []
            for message in messages:
                node = message.metadata.dst_node_id
                self.count += 1
                # the node gets its own copy, as over a network (the workflow shares one content among messages)
                message = Message(recorddict_from_proto(recorddict_to_proto(message.content)), dst_node_id=node,
                                  message_type=message.metadata.message_type, group_id=message.metadata.group_id)
                message.metadata.__dict__["_message_id"] = f"m{self.count}"
                received[node] += _record_bytes(message.content)
                began = time.process_time()
                reply = app(message, self.contexts[node])
                client_cpu[node] += time.process_time() - began
                sent[node] += _record_bytes(reply.content) if reply.has_content() else 0
                self.replies[message.metadata.message_id] = reply
                ids.append(message.metadata.message_id)
            return ids

        def pull_messages(self, message_ids):
            return [self.replies.pop(i) for i in message_ids if i in self.replies]

        def send_and_receive(self, messages, *, timeout=None):
            return self.pull_messages(self.push_messages(messages))

    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, 0, 1
    logging.getLogger("flwr").setLevel(logging.WARNING)  # its per-stage debug lines
    strategy = FlowerFedAvg(initial_parameters=ndarrays_to_parameters([np.zeros(params, dtype=np.float32)]),
                            fraction_evaluate=0.0, min_fit_clients=n, min_available_clients=n)
    grid = InProcessGrid()
    context = LegacyContext(Context(1, 0, {}, RecordDict(), {}), config=ServerConfig(num_rounds=1), strategy=strategy)
    began = time.process_time()
    DefaultWorkflow(fit_workflow=SecAggPlusWorkflow(num_shares=neighbours + 1, reconstruction_threshold=0.5))(
        grid, context)
    total = time.process_time() - began
    return {"client_cpu_s": sum(client_cpu.values()) / n, "server_cpu_s": total - sum(client_cpu.values()),
            "bytes_sent_per_client": sum(sent.values()) / n, "bytes_received_per_client": sum(received.values()) / n}


def compare_with_flower(clients: list[int], params: int, neighbours: int, console: Console) -> list[dict]:
    table = Table(title=f"SecAgg+ in one round, {params:,}-parameter update, {neighbours} neighbours, no dropouts")
    for column in ("clients", "implementation", "ring", "client CPU s", "server CPU s", "MB sent / client",
                   "MB received / client"):
        table.add_column(column, justify="right")
    rows = []
    for n in clients:
        k = min(neighbours, n - 1)
        for name, ring, measure, extra in (("fedlit", "2^64", fedlit_over_flower_records, (64,)),
                                           ("fedlit", "2^32", fedlit_over_flower_records, (32,)),
                                           ("Flower SecAggPlusWorkflow", "2^32", flower_secaggplus, ())):
            result = {"clients": n, "implementation": name, "ring": ring, **measure(n, params, k, *extra)}
            rows.append(result)
            table.add_row(str(n), name, ring, f"{result['client_cpu_s']:.3f}", f"{result['server_cpu_s']:.3f}",
                          f"{result['bytes_sent_per_client'] / 1e6:.2f}",
                          f"{result['bytes_received_per_client'] / 1e6:.2f}")
    console.print(table)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", type=int, nargs="+", default=[10, 50, 100])
    parser.add_argument("--params", type=int, default=1_000_000)
    parser.add_argument("--neighbours", type=int, default=10)
    parser.add_argument("--bits", type=int, default=64)
    parser.add_argument("--scale", type=float, help="fixed-point scale (default 2^24, or 2^12 up to 32 bits)")
    parser.add_argument("--clip", type=float, default=1.0)
    parser.add_argument("--json")
    parser.add_argument("--flower", action="store_true", help="compare with Flower's SecAggPlusWorkflow")
    parser.add_argument("--smoke", action="store_true", help="both parts on 10 clients (one dropping), 2 neighbours "
                        "and a 1,000-parameter update: seconds (the test suite)")
    args = parser.parse_args()
    if args.smoke:
        args.clients, args.params, args.neighbours = [10], 1_000, 2
    torch.set_num_threads(1)
    console = Console(width=140)
    report = {}
    if args.flower or args.smoke:
        report["flower_rows"] = compare_with_flower(args.clients, args.params, args.neighbours, console)
    if not args.flower:
        report.update(native(args, console))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=2)


def native(args: argparse.Namespace, console: Console) -> dict:
    """fedlit's SecAgg+ and SecAgg, with and without dropouts, against plain FedAvg."""
    speed = keystream_gb_per_s(args.params, args.bits)
    console.print(f"AES-256-CTR keystream: {speed:.2f} GB/s on one core (target >= 1 GB/s)")
    table = Table(title=f"Secure aggregation, {args.params:,}-parameter update, {args.bits}-bit ring")
    for column in ("clients", "graph", "dropouts", "client mask ms", "server unmask s", "unmask ms / client",
                   "server FedAvg s", "MB sent / client", "x plain FedAvg"):
        table.add_column(column, justify="right")
    rows = []
    for n in args.clients:
        fedavg_seconds, plain_bytes = plain_fedavg(n, args.params)
        for graph, neighbours in ((f"SecAgg+ k={args.neighbours}", args.neighbours), ("SecAgg (all pairs)", None)):
            scale = args.scale or (2.0**24 if args.bits > 32 else 2.0**12)
            config = SecureAggregationConfig(bits=args.bits, scale=scale, clip=args.clip, neighbours=neighbours)
            for drop in (0.0, 0.1):
                result = secure_round(n, args.params, config, drop)
                row = {"clients": n, "graph": graph, "dropout_fraction": drop, "plain_fedavg_server_s": fedavg_seconds,
                       "plain_bytes_per_client": plain_bytes, **result}
                rows.append(row)
                table.add_row(str(n), graph, f"{int(drop * n)}", f"{1e3 * result['client_mask_s']:.1f}",
                              f"{result['server_unmask_s']:.2f}", f"{1e3 * result['server_unmask_s'] / n:.1f}",
                              f"{fedavg_seconds:.2f}", f"{result['bytes_sent_per_client'] / 1e6:.2f}",
                              f"{result['bytes_sent_per_client'] / plain_bytes:.2f}")
    console.print(table)
    return {"keystream_gb_per_s": speed, "rows": rows}


if __name__ == "__main__":
    main()
