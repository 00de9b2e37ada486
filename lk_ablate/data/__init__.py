"""DataModules: ImageFolder (torchvision), FFCV (.beton), Fashion-MNIST (the embedded default).

Names are imported on first use, so ``lk_ablate data ... --help`` and the writer's options need no torch.
"""
from ..base.lazy import lazy_exports

__all__ = ["ClassificationDataModule", "FashionMNISTDataModule", "FFCVDataModule", "ImageFolderDataModule",
           "SeededDataset"]
__getattr__, __dir__ = lazy_exports(__name__, {
    ".base": ["ClassificationDataModule", "SeededDataset"], ".fashion_mnist": ["FashionMNISTDataModule"],
    ".folder": ["ImageFolderDataModule"], ".ffcv": ["FFCVDataModule"]}, globals())  # FFCV itself: when one is built
