"""FedOST on the which-play task: emulators of two sizes against tuning the same adapters on the full model.

Runs configs/fedost.yaml (or --config) once per emulator ratio on the same data and held-out split, and
once more with server-side emulator distillation for each of --distilled-ratios; ratio 1.0 keeps every
middle block, i.e. the same adapter blocks tuned on the full model (the reference).
Prints, on the server's held-out lines: full model zero-shot, emulator zero-shot, emulator + tuned
adapters, plug-in (full model + tuned adapters), and the sizes.

    python experiments/fedost_table.py [--ratios 0.5 0.25 1.0] [--distilled-ratios 0.5] [--distill-steps 100] \
        [--json out.json] [any fedlit fedost option]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table
from smoke import parse_experiment_args

from fedlit.cli import compose, fit_parser, quiet_libraries

STAGES = ("full_zero_shot", "emulator_zero_shot", "emulator_tuned", "plug_in")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="configs/fedost.yaml")
    parser.add_argument("--output-dir", type=Path, default=Path("outputs/fedost_table"))
    parser.add_argument("--ratios", type=float, nargs="+", default=[0.5, 0.25, 1.0])
    parser.add_argument("--distilled-ratios", type=float, nargs="*", default=[0.5])
    parser.add_argument("--distill-steps", type=int, default=100)
    parser.add_argument("--json", type=Path)
    args, options = parse_experiment_args(parser, "fedost")
    quiet_libraries()
    if args.smoke:  # one emulator ratio, and one distilled for a step
        args.ratios, args.distilled_ratios, args.distill_steps = [0.5], [0.5], 1
    cli = fit_parser("fedost")
    reports = {}
    settings = [(r, 0) for r in args.ratios] + [(r, args.distill_steps) for r in args.distilled_ratios]
    for ratio, steps in settings:
        name = f"{ratio:g} of the middle" + (f", distilled {steps} steps" if steps else "")
        config = cli.parse_args(["--config", args.config, "--offsite.emulator_ratio", str(ratio), "--progress", "false",
                                 "--distillation.steps", str(steps), "--loggers", "[]",
                                 "--output_dir", str(args.output_dir / f"ratio-{ratio:g}-distill-{steps}"), *options])
        began = time.perf_counter()
        compose("fedost", config, cli).fit()
        reports[name] = json.loads(Path(config.output_dir, "offsite.json").read_text())
        reports[name]["seconds"] = time.perf_counter() - began
        print(f"{name}: " + ", ".join(f"{s} {reports[name][s]['choice_accuracy']:.3f}" for s in STAGES), flush=True)

    table = Table(title="FedOST, which-play accuracy (loss) on the server's held-out lines")
    for column in ("emulator", "params full / emulator / adapter", "MB / client / round", *STAGES):
        table.add_column(column, justify="right")
    for name, report in reports.items():
        p = report["parameters"]
        sizes = " / ".join(f"{p[k] / 1e6:.1f}M" for k in ("full_model", "emulator", "adapter"))
        table.add_row(f"{name} ({len(report['plan'])} blocks)", sizes,
                      f"{report['bytes_per_client_per_round'] / 1e6:.1f}",
                      *(f"{report[s]['choice_accuracy']:.3f} ({report[s]['loss']:.3f})" for s in STAGES))
    Console(width=200).print(table)
    if args.json:
        args.json.write_text(json.dumps(reports, indent=2, default=float))


if __name__ == "__main__":
    main()
