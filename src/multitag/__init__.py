"""multitag: multi-task tagging and visual search for product images.

The estimators load lazily, so ``import multitag`` (and the torch-free modules: metrics, index,
k-means, the catalogue store) does not import torch.
"""

from __future__ import annotations

__version__ = "0.1.0"
__all__ = ["MultiTaskTagger", "TaggerEnsemble", "__version__"]


def __getattr__(name: str):
    if name == "MultiTaskTagger":
        from multitag.tagger.estimator import MultiTaskTagger

        return MultiTaskTagger
    if name == "TaggerEnsemble":
        from multitag.tagger.ensemble import TaggerEnsemble

        return TaggerEnsemble
    raise AttributeError(f"module 'multitag' has no attribute {name!r}")
