"""PA-HCL: physiology-aware hierarchical contrastive learning for phonocardiograms."""
__version__ = "0.1.0"
