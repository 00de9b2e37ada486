"""Training: the LightningModule with the recipe, the schedule, and the trainer callbacks."""
from .module import ImageClassifier

__all__ = ["ImageClassifier"]
