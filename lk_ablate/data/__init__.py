"""DataModules: ImageFolder (torchvision), FFCV (.beton), Fashion-MNIST (the embedded default)."""
from .base import ClassificationDataModule, SeededDataset
from .fashion_mnist import FashionMNISTDataModule
from .folder import ImageFolderDataModule

__all__ = ["ClassificationDataModule", "FashionMNISTDataModule", "ImageFolderDataModule", "SeededDataset"]
