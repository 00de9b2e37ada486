"""Importing FFCV (and numba) safely, or one error that says how to install them.

The FFCV modules (``ffcv``, ``ffcv_loader``, ``ffcv_writer``, ``fashion_mnist_ffcv``) call :func:`require_ffcv`
before any ``ffcv`` import; it sits in its own module so none of them imports another only for it.
"""
from __future__ import annotations

import torch

from ..base.errors import ConfigError

__all__ = ["FFCV_INSTALL_HINT", "require_ffcv"]

FFCV_INSTALL_HINT = ("FFCV is not installed. Install the `ffcv` extra: `make setup` does it, or by hand "
                     "`apt-get install libopencv-dev libturbojpeg0-dev pkg-config` then "
                     "`pip install -e '.[ffcv]'`. Or use the ImageFolder fallback: "
                     "--data configs/base/data_imagenet_folder.yaml")


def require_ffcv() -> None:
    """Import FFCV (and numba) or raise a ConfigError that says how to install it.

    Call it before any other ``ffcv`` import: importing ``ffcv.pipeline.compiler`` runs
    ``torch.set_num_threads(1)``, which would leave training on one core (measured: the demo's
    steps took 1.6x as long). The thread count torch had before the import is restored.
    """
    threads = torch.get_num_threads()
    try:
        import ffcv  # noqa: F401
        import ffcv.pipeline.compiler  # noqa: F401
        import numba  # noqa: F401
    except ImportError as e:
        raise ConfigError(f"{FFCV_INSTALL_HINT} ({e})") from e
    finally:
        torch.set_num_threads(threads)
