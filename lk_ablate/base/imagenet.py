"""ImageNet's normalisation constants (timm's IMAGENET_DEFAULT_MEAN / _STD), in the bottom layer so that option
dataclasses read them without importing the models (and torch)."""
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
