"""Data: the built-in dataset, registered datasets and the speaker-independent splits."""

from fairray.data._dataset import DATASETS, SPLITS, SERData, declared_inputs, prepare, speaker_split

__all__ = ["DATASETS", "SPLITS", "SERData", "declared_inputs", "prepare", "speaker_split"]
