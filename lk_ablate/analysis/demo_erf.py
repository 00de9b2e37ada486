"""The demo's ERF stage: the effective receptive field of the trained demo models on real Fashion-MNIST.

``lk_ablate demo`` calls :func:`demo_erf` after scoring: the first ``num_images`` test images (in the file's
order), upsampled (bilinear, as the demo's own 28 -> 32 px resize) to ``image_size`` px so that the last stage's map
has a centre with room around it (32 px gives a 1x1 map), grey -> RGB, each model's own mean/std; then
``erf`` (relu of the input gradient of the centre output, log rescale, RepLKNet's thresholds) through
``run_analyses``, so each run's results file gets its ``erf`` entry and map and the report draws the heat maps.
"""
from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn

from ..data.fashion_mnist import resize_grey
from .erf import area_table
from .runner import run_analyses

DEMO_IMAGES = 50  # RepLKNet's num_images
DEMO_SIZE = 224  # px: a 7x7 last-stage map (a true centre) for the stride-32 model; at 128 px t = 0.99 saturates
DEMO_CHUNK = 10  # images per backward pass (memory only)


def demo_inputs(images: np.ndarray, num_images: int, image_size: int, mean: Any, std: Any) -> torch.Tensor:
    """uint8 (N, 28, 28) grey images -> the first ``num_images`` as normalised (n, 3, S, S) float32."""
    grey = resize_grey(images[:num_images], image_size).float().div(255)
    x = grey[:, None].expand(-1, 3, -1, -1)
    m = torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1)
    s = torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1)
    return ((x - m) / s).contiguous()


def demo_erf(models: Mapping[int, nn.Module], images: np.ndarray, results_paths: Mapping[int, str | Path],
             num_images: int = DEMO_IMAGES, image_size: int = DEMO_SIZE, chunk: int = DEMO_CHUNK,
             output_dir: str | Path | None = None) -> tuple[dict[int, dict[str, Any]], str]:
    """ERF of each model (kernel size -> model with its ``model_config``) on the first ``num_images`` of
    ``images``; each result is stored in ``results_paths[k]`` (an existing results file). Returns the results and
    the printable area-ratio table."""
    results: dict[int, dict[str, Any]] = {}
    section = {"erf": {"image_size": image_size, "num_images": num_images, "chunk": chunk}}
    for k, model in models.items():
        cfg = model.model_config
        x = demo_inputs(images, num_images, image_size, cfg.mean, cfg.std)
        path = Path(results_paths[k])
        out_dir = Path(output_dir) if output_dir is not None else path.parent
        results[k] = run_analyses(model, section, [(x, torch.zeros(len(x), dtype=torch.long))], cfg,
                                  results_path=path, out_dir=out_dir, plot_prefix=path.name.removesuffix(".json") + ".",
                                  label=f"{getattr(model, 'model_name', None) or 'model'} k{k}")["erf"]
    return results, area_table(results)
