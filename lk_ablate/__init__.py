"""lk_ablate: training and robustness ablations for large-kernel ConvNets."""
from .models import ModelConfig, create_model, get_model_config, list_models

__version__ = "0.1.0"
__all__ = ["ModelConfig", "create_model", "get_model_config", "list_models", "__version__"]
