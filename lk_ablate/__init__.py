"""lk_ablate: training and robustness ablations for large-kernel ConvNets.

The model API (``create_model``, ``list_models``, ...) is imported on first use, so the command line's help, its
parsers and ``--version`` start without torch.
"""
from .base.lazy import lazy_exports
from .base.version import __version__

__all__ = ["ModelConfig", "create_model", "get_model_config", "list_models", "__version__"]
__getattr__, __dir__ = lazy_exports(__name__, {".models": ["ModelConfig", "create_model", "get_model_config",
                                                           "list_models"]}, globals())
