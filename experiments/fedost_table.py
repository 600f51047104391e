"""FedOST on the which-play task: emulators of two sizes against tuning the same adapters on the full model.

Runs configs/fedost.yaml (or --config) once per emulator ratio on the same data and held-out split;
ratio 1.0 keeps every middle block, i.e. the same adapter blocks tuned on the full model (the reference).
Prints, on the server's held-out lines: full model zero-shot, emulator zero-shot, emulator + tuned
adapters, plug-in (full model + tuned adapters), and the sizes.

    python experiments/fedost_table.py [--ratios 0.5 0.25 1.0] [--json out.json] [any fedlit fedost option]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

from fedlit.algorithms import fed_ost
from fedlit.cli import _quiet_libraries, fit_parser

STAGES = ("full_zero_shot", "emulator_zero_shot", "emulator_tuned", "plug_in")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="configs/fedost.yaml")
    parser.add_argument("--output-dir", type=Path, default=Path("outputs/fedost_table"))
    parser.add_argument("--ratios", type=float, nargs="+", default=[0.5, 0.25, 1.0])
    parser.add_argument("--json", type=Path)
    args, options = parser.parse_known_args()
    _quiet_libraries()
    cli = fit_parser("fedost")
    reports = {}
    for ratio in args.ratios:
        config = cli.parse_args(["--config", args.config, "--offsite.emulator_ratio", str(ratio), "--progress", "false",
                                 "--loggers", "[]", "--output_dir", str(args.output_dir / f"ratio-{ratio:g}"),
                                 *options])
        init = cli.instantiate(config)
        kwargs = {k: init[k] for k in vars(config) if k not in ("trainer", "resume", "config")}
        began = time.perf_counter()
        reports[ratio] = fed_ost(**kwargs, trainer_kwargs=vars(config.trainer)).fit()
        reports[ratio]["seconds"] = time.perf_counter() - began
        print(f"ratio {ratio:g}: " + ", ".join(f"{s} {reports[ratio][s]['choice_accuracy']:.3f}" for s in STAGES),
              flush=True)

    table = Table(title="FedOST, which-play accuracy (loss) on the server's held-out lines")
    for column in ("emulator", "params full / emulator / adapter", "MB / client / round", *STAGES):
        table.add_column(column, justify="right")
    for ratio, report in reports.items():
        p = report["parameters"]
        blocks = len(report["plan"])
        name = f"{ratio:g} of the middle ({blocks} blocks)" + (" = full model" if ratio == 1 else "")
        table.add_row(name, f"{p['full_model'] / 1e6:.1f}M / {p['emulator'] / 1e6:.1f}M / {p['adapter'] / 1e6:.1f}M",
                      f"{report['bytes_per_client_per_round'] / 1e6:.1f}",
                      *(f"{report[s]['choice_accuracy']:.3f} ({report[s]['loss']:.3f})" for s in STAGES))
    Console(width=200).print(table)
    if args.json:
        args.json.write_text(json.dumps({str(k): v for k, v in reports.items()}, indent=2, default=float))


if __name__ == "__main__":
    main()
