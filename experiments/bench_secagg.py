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

    python experiments/bench_secagg.py [--clients 10 50 100] [--params 1000000] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import time

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
        masked = secure.clients[client_id].mask(update, 100)
        mask_seconds.append(time.perf_counter() - began)
        secure.submit(client_id, encode(masked))
    began = time.perf_counter()
    secure.finish()
    unmask = time.perf_counter() - began
    sent = [secure.bytes_sent[c] for c in secure.server.survivors]
    return {"key_exchange_s_per_client": key_exchange, "client_mask_s": float(np.median(mask_seconds)),
            "server_unmask_s": unmask, "bytes_sent_per_client": float(np.mean(sent))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", type=int, nargs="+", default=[10, 50, 100])
    parser.add_argument("--params", type=int, default=1_000_000)
    parser.add_argument("--neighbours", type=int, default=10)
    parser.add_argument("--bits", type=int, default=64)
    parser.add_argument("--scale", type=float, help="fixed-point scale (default 2^24, or 2^12 up to 32 bits)")
    parser.add_argument("--clip", type=float, default=1.0)
    parser.add_argument("--json")
    args = parser.parse_args()
    torch.set_num_threads(1)

    speed = keystream_gb_per_s(args.params, args.bits)
    console = Console(width=140)
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
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"keystream_gb_per_s": speed, "rows": rows}, f, indent=2)


if __name__ == "__main__":
    main()
