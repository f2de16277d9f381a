"""multitag: multi-task tagging and visual search for product images."""

from multitag import _torchvision_compat

_torchvision_compat.patch()

__version__ = "0.1.0"

from multitag.tagger import MultiTaskTagger  # noqa: E402
from multitag.tagger_ensemble import TaggerEnsemble  # noqa: E402

__all__ = ["MultiTaskTagger", "TaggerEnsemble", "__version__"]
