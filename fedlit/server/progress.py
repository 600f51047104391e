"""A Rich progress display over rounds and the clients of the current round."""

from __future__ import annotations

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn


class RoundProgress:
    """Two bars: rounds done, and clients done in this round; ``enabled=False`` shows nothing."""

    def __init__(self, rounds: int, first_round: int, enabled: bool = True) -> None:
        self.progress = Progress(
            TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
            TextColumn("{task.fields[status]}"), disable=not enabled,
        )
        self.rounds = self.progress.add_task("rounds", total=rounds, completed=first_round - 1, status="")
        self.clients = self.progress.add_task("clients", total=0, status="")

    def __enter__(self) -> RoundProgress:
        self.progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.progress.stop()

    def start_round(self, server_round: int, num_clients: int) -> None:
        self.progress.reset(self.clients, total=num_clients, description=f"round {server_round} clients")

    def client_done(self, client_id: str) -> None:
        self.progress.update(self.clients, advance=1, status=f"{client_id} done")

    def round_done(self, status: str) -> None:
        self.progress.update(self.clients, status="")
        self.progress.update(self.rounds, advance=1, status=status)
