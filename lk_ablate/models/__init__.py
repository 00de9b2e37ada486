"""Model registry and the model families of the kernel-size study."""
from .kernel_sizes import kernel_label, stage_kernel_sizes
from .layers import LargeKernelDWConv
from .registry import (ModelConfig, create_model, default_kernel_sizes, get_model_config, list_models, model_family,
                       register_model)

# Importing the variants' modules runs their @register_model decorators (timm's pattern): after this line the
# registry is complete, whichever lk_ablate.models module a caller imports.
from . import convnext, replknet  # noqa: E402,F401  isort: skip

__all__ = ["LargeKernelDWConv", "ModelConfig", "create_model", "default_kernel_sizes", "get_model_config",
           "kernel_label", "list_models", "model_family", "register_model", "stage_kernel_sizes"]
