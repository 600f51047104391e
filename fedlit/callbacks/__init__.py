"""Lightning callbacks that add federation to an ordinary client ``Trainer``."""

from fedlit.callbacks.adapter_extraction import AdapterExtraction
from fedlit.callbacks.emulator_construction import EmulatorConstruction
from fedlit.callbacks.example_dp import ExampleLevelDP
from fedlit.callbacks.fedprox import FedProx
from fedlit.callbacks.masked_aggregation import MaskedAggregation
from fedlit.callbacks.personal_state import PersonalState
from fedlit.callbacks.update_clipping import UpdateClipping
from fedlit.callbacks.update_compression import ErrorFeedback, UpdateCompression
from fedlit.callbacks.watermark_embedding import WatermarkEmbedding

__all__ = ["AdapterExtraction", "EmulatorConstruction", "ErrorFeedback", "ExampleLevelDP", "FedProx",
           "MaskedAggregation", "PersonalState", "UpdateClipping", "UpdateCompression", "WatermarkEmbedding"]
