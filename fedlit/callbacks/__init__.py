"""Lightning callbacks that add federation to an ordinary client ``Trainer``."""

from fedlit.callbacks.adapter_extraction import AdapterExtraction

__all__ = ["AdapterExtraction"]
