"""DataModules: ImageFolder (torchvision), FFCV (.beton), Fashion-MNIST (the embedded default)."""
from .base import ClassificationDataModule, SeededDataset
from .fashion_mnist import FashionMNISTDataModule
from .folder import ImageFolderDataModule
from .ffcv import FFCVDataModule  # imports FFCV only when an instance is built

__all__ = ["ClassificationDataModule", "FashionMNISTDataModule", "FFCVDataModule", "ImageFolderDataModule",
           "SeededDataset"]
