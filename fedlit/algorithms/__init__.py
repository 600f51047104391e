"""Algorithms: how modules, callbacks, data and server strategy compose into a federated run."""

from fedlit.algorithms.fed_co_llm import CoTuningServer, fed_co_llm
from fedlit.algorithms.fed_dpo import fed_dpo
from fedlit.algorithms.fed_hetero_llm import fed_hetero_llm
from fedlit.algorithms.fed_homo_llm import fed_homo_llm
from fedlit.algorithms.fed_kseed import fed_kseed
from fedlit.algorithms.fed_mkt import MutualTransferServer, fed_mkt
from fedlit.algorithms.fed_ost import OffsitePlugIn, fed_ost

__all__ = ["CoTuningServer", "MutualTransferServer", "OffsitePlugIn", "fed_co_llm", "fed_dpo", "fed_hetero_llm",
           "fed_homo_llm", "fed_kseed", "fed_mkt", "fed_ost"]
