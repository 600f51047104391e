"""Per-client data statistics: a table (CSV + console) and a label heat-map (PNG)."""

from __future__ import annotations

import csv
import io
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt  # noqa: E402
from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

from fedlit.data.federated import FederatedData  # noqa: E402
from fedlit.files import atomic_write_bytes  # noqa: E402


def partition_rows(data: FederatedData) -> list[dict[str, int | str]]:
    """One row per client: split sizes, then records per label."""
    rows = []
    for (client_id, module), counts in zip(data.clients.items(), data.label_counts, strict=True):
        row: dict[str, int | str] = {"client": client_id, "train": len(module.train_dataset),
                                     "val": len(module.val_dataset), "total": int(counts.sum())}
        row.update({f"label:{name}": int(c) for name, c in zip(data.label_names, counts, strict=True)})
        rows.append(row)
    return rows


def write_partition_report(data: FederatedData, output_dir: Path, console: Console | None = None) -> None:
    """``partition.csv`` and ``partition.png`` in ``output_dir``; a size table on the console."""
    rows = partition_rows(data)
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_bytes(Path(output_dir) / "partition.csv", buffer.getvalue().encode())

    label_room = 0.09 * max(len(name) for name in data.label_names)  # rotated tick labels below the map
    width = 3 + 0.09 * max(len(str(r["client"])) for r in rows) + 0.35 * len(data.label_names)
    figure, axes = plt.subplots(figsize=(min(width, 24), min(1.5 + label_room + 0.3 * len(rows), 24)))
    image = axes.imshow(data.label_counts, aspect="auto", cmap="viridis")
    axes.set_yticks(range(len(rows)), [str(r["client"]) for r in rows])
    axes.set_xticks(range(len(data.label_names)), data.label_names, rotation=90)
    axes.set_xlabel("label")
    axes.set_title("records per client and label")
    figure.colorbar(image, ax=axes, label="records")
    figure.tight_layout()
    png = io.BytesIO()
    figure.savefig(png, format="png", dpi=100)
    plt.close(figure)
    atomic_write_bytes(Path(output_dir) / "partition.png", png.getvalue())

    table = Table(title="clients")
    for column in ("client", "train", "val", "total", "labels held"):
        table.add_column(column)
    for row, counts in zip(rows, data.label_counts, strict=True):
        table.add_row(str(row["client"]), str(row["train"]), str(row["val"]), str(row["total"]),
                      str(int((counts > 0).sum())))
    (console or Console()).print(table)
