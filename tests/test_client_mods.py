"""The client-mod chain is generic: a new mod is its builder plus one registration line, its settings come from a
strategy wrapper's fit plan by name and cross the Flower wire as plain data, and every mod shapes the reply."""

import lightning as L

from fedlit.backends import FitIns
from fedlit.client import Client
from fedlit.client.mods import CLIENT_MODS, ClientMod
from fedlit.flower.envelope import KINDS
from fedlit.strategies import FedAvg
from fedlit.strategies.wrapper import StrategyWrapper
from fedlit.wire import pack, unpack


class BatchCount(ClientMod):
    """Counts the fit's training batches and reports them in the reply's metrics."""

    def __init__(self, label: str) -> None:
        self.label, self.batches = label, 0

    def on_train_batch_end(self, trainer: L.Trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.batches += 1

    def shape_reply(self, reply) -> None:
        reply.metrics[self.label] = self.batches


def batch_count(fit):
    settings = fit.settings("batch_count")
    return BatchCount(settings["label"]) if settings is not None else None


class AskForBatchCounts(StrategyWrapper):
    def fit_plan(self, masked):
        return {**self.inner.fit_plan(masked), "batch_count": {"label": "counted"}}


def test_a_new_client_mod_needs_only_its_builder_and_its_registration(make_loop, monkeypatch):
    monkeypatch.setitem(CLIENT_MODS, "batch_count", batch_count)  # the one registration line, at run time
    replies, original = [], Client.fit

    def spy(self, ins, *args, **kwargs):
        replies.append((ins.mods, original(self, ins, *args, **kwargs)))
        return replies[-1][1]

    monkeypatch.setattr(Client, "fit", spy)
    make_loop(rounds=2, strategy=AskForBatchCounts(FedAvg(clients_per_round=2)),
              trainer_kwargs={"max_steps": 3, "accelerator": "cpu"}).fit()
    assert len(replies) == 4
    assert all(mods == {"batch_count": {"label": "counted"}} for mods, _ in replies)
    assert all(reply.metrics["counted"] == 3 for _, reply in replies)  # 3 steps of 1 batch each
    assert all(reply.num_examples > 0 and reply.wire for _, reply in replies)  # extraction still shaped the rest


def test_without_its_settings_a_mod_does_not_run(make_loop, monkeypatch):
    monkeypatch.setitem(CLIENT_MODS, "batch_count", batch_count)
    replies, original = [], Client.fit
    monkeypatch.setattr(Client, "fit", lambda self, ins, *a, **k: replies.append(original(self, ins, *a, **k))
                        or replies[-1])
    make_loop(rounds=1, trainer_kwargs={"max_steps": 2, "accelerator": "cpu"}).fit()
    assert replies and all("counted" not in reply.metrics for reply in replies)


def test_mod_settings_cross_the_flower_wire_as_plain_data():
    ins = FitIns(b"adapter", seed=3, server_round=2, run_id="abc",
                 mods={"batch_count": {"label": "counted"}, "clipping": {"clip_norm": 0.5, "noise_std": 0.1}})
    assert unpack(pack(ins), KINDS, "fedlit request") == ins
