"""Model registry and the model families of the kernel-size study."""
from .kernels import stage_kernel_sizes
from .layers import LargeKernelDWConv
from .registry import ModelConfig, create_model, get_model_config, list_models, register_model

__all__ = ["LargeKernelDWConv", "ModelConfig", "create_model", "get_model_config", "list_models", "register_model",
           "stage_kernel_sizes"]
