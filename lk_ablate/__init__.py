"""lk_ablate: training and robustness ablations for large-kernel ConvNets."""
from .base.version import __version__
from .models import ModelConfig, create_model, get_model_config, list_models

__all__ = ["ModelConfig", "create_model", "get_model_config", "list_models", "__version__"]
