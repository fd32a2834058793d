"""PA-HCL data path: readers -> preprocessing -> segmentation -> cached cycles -> contrastive views.

See docs/data.md and docs/architecture.md ("Data") for the contracts.
"""
from .cycles import CycleSet, load_cycles, split_by_group, split_train_val_test
from .dataset import ContrastiveCycleDataset
from .readers import DataSpecError, NoUsableRecordingsError, SkipLog, parse_spec, read_recordings
from .segmentation import from_annotations, segment
from .types import Cycle, Recording

__all__ = ["ContrastiveCycleDataset", "Cycle", "CycleSet", "DataSpecError", "NoUsableRecordingsError", "Recording",
           "SkipLog", "from_annotations", "load_cycles", "parse_spec", "read_recordings", "segment", "split_by_group",
           "split_train_val_test"]
