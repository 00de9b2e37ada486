"""Models and validation data for the analyses, through the one evaluation loader (``lk_ablate.evaluation``).

``load_model`` / ``create_timm_model`` (one weight set, with a report label) serve the analyses that load a
second model (TAIG's surrogate); ``ValSource`` reads an ImageNet-style val folder with any ``EvalSpec``, one
DataLoader per spec (the protocol ``paper`` gives analyses different transforms).
"""
from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from ..data.transforms import EvalSpec
from ..base.errors import DataError
from ..evaluation.loading import EvalModels, load_for_eval, timm_model_config
from ..evaluation.options import ModelOptions
from ..models.registry import ModelConfig


@dataclasses.dataclass
class LoadedModel:
    """A model in eval mode with the input config it expects and a short label for reports."""

    model: nn.Module
    config: ModelConfig
    label: str
    meta: dict[str, Any]

    @classmethod
    def from_eval_models(cls, em: EvalModels) -> "LoadedModel":
        (weights, model), = em.models.items()
        meta = dict(em.meta, source=em.source, checkpoint=em.checkpoint, format=em.checkpoint_format,
                    epoch=em.epoch, global_step=em.global_step, ema=weights == "ema", weights=weights,
                    model_name=em.name, eval_models=em)
        return cls(model, em.config, em.label, meta)

    def results_init(self) -> dict[str, Any]:
        """Keyword arguments of ``base.results.make_results`` describing this model (a new results file)."""
        return self.meta["eval_models"].results_init()


def load_model(ckpt: str | os.PathLike | None = None, model_name: str | None = None, kernel_size: Any = None,
               num_classes: int | None = None, timm_model: str | None = None, ema: bool | None = None,
               model_kwargs: dict[str, Any] | None = None) -> LoadedModel:
    """One weight set of a model (EMA when the checkpoint has it, unless ``ema`` says otherwise); a registered
    ``model_name`` without ``ckpt`` has random weights (``meta["random_weights"]``)."""
    weights = "auto" if ema is None else ("ema" if ema else "raw")
    opts = ModelOptions(ckpt_path=None if ckpt is None else os.fspath(ckpt), model_name=model_name,
                        kernel_size=kernel_size, timm=timm_model, num_classes=num_classes, model_kwargs=model_kwargs,
                        weights=weights)
    return LoadedModel.from_eval_models(load_for_eval(opts, allow_random=True))


def create_timm_model(name: str, checkpoint: str | os.PathLike | None = None, num_classes: int | None = None,
                      **kwargs: Any) -> LoadedModel:
    """A timm model with weights from a local file (timm's key precedence, safe unpickling)."""
    if checkpoint is None:  # the analyses never download: random weights, as timm's pretrained=False
        import timm  # lazy: only a timm model pays for timm.models

        model = timm.create_model(name, pretrained=False, **({"num_classes": num_classes} if num_classes else {}),
                                  **kwargs).eval()
        return LoadedModel(model, timm_model_config(model, name), name, {"source": "timm", "timm_model": name,
                                                                         "checkpoint": None, "format": None})
    opts = ModelOptions(ckpt_path=os.fspath(checkpoint), timm=name, num_classes=num_classes,
                        model_kwargs=kwargs or None)
    return LoadedModel.from_eval_models(load_for_eval(opts))


class ValSource:
    """An ImageFolder val set (root/<class>/<images>) read with any EvalSpec; one cached DataLoader per spec.

    ``limit``: a seeded random subset of that many images, so every class can appear (ImageFolder is sorted by
    class, the first N images would be a few classes only).
    """

    def __init__(self, root: str | os.PathLike, num_classes: int, batch_size: int = 64, num_workers: int = 4,
                 limit: int | None = None, seed: int = 0) -> None:
        self.root = Path(root)
        if not self.root.is_dir():
            raise DataError(f"validation folder not found: {self.root}\n  expected layout: {self.root}/<class>/"
                            "<images>\n  for ImageNet val run `lk_ablate data prepare-imagenet-val` first")
        self.num_classes, self.batch_size, self.num_workers = num_classes, batch_size, num_workers
        self.limit, self.seed = limit, seed
        self._loaders: dict[EvalSpec, torch.utils.data.DataLoader] = {}

    def loader(self, spec: EvalSpec) -> torch.utils.data.DataLoader:
        if spec not in self._loaders:
            self._loaders[spec] = self._build(spec)
        return self._loaders[spec]

    def _build(self, spec: EvalSpec) -> torch.utils.data.DataLoader:
        from torchvision.datasets import ImageFolder

        ds = ImageFolder(str(self.root), transform=spec.transform())
        if len(ds.classes) != self.num_classes:
            raise DataError(f"{self.root} has {len(ds.classes)} class folders but the model predicts "
                            f"{self.num_classes} classes; point --data.imagenet_val at the matching validation set")
        if self.limit is not None and self.limit < len(ds):
            g = torch.Generator().manual_seed(self.seed)
            idx = torch.randperm(len(ds), generator=g)[: self.limit].sort().values.tolist()
            ds = torch.utils.data.Subset(ds, idx)
        return torch.utils.data.DataLoader(ds, batch_size=self.batch_size, shuffle=False,
                                           num_workers=self.num_workers)


def val_loader(root: str | os.PathLike, cfg: ModelConfig, batch_size: int = 64, num_workers: int = 4,
               limit: int | None = None, seed: int = 0) -> torch.utils.data.DataLoader:
    """The val folder read with the model's own eval transform (``protocol: model``)."""
    return ValSource(root, cfg.num_classes, batch_size, num_workers, limit, seed).loader(
        EvalSpec.from_model_config(cfg))
