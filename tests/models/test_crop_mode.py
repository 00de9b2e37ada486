"""Evaluation crop modes: timm's "center" (default) and "squash" (RepLKNet's official evaluation at >= 384 px,
which resizes the whole image to the input size without cropping), in every pipeline that evaluates."""
import numpy as np
import pytest
import torch
from PIL import Image
from torchvision import transforms as T

from lk_ablate.data import FFCVDataModule, ImageFolderDataModule
from lk_ablate.data.ffcv_writer import WriterConfig, write_ffcv
from lk_ablate.data.transforms import eval_transform
from lk_ablate.base.errors import ConfigError
from lk_ablate.models.registry import IMAGENET_MEAN, IMAGENET_STD, ModelConfig, get_model_config
from lk_ablate.robustness.benchmarks import eval_transform as robustness_eval_transform


def official_replknet_eval(size: int):
    """RepLKNet's datasets.build_transform for evaluation at input_size >= 384 (official repository)."""
    return T.Compose([T.Resize((size, size), interpolation=T.InterpolationMode.BICUBIC), T.ToTensor(),
                      T.Normalize(IMAGENET_MEAN, IMAGENET_STD)])


def test_crop_mode_is_validated_and_replknet_31l_squashes():
    assert ModelConfig().crop_mode == "center"
    cfg = get_model_config("replknet_31l")
    assert (cfg.crop_mode, cfg.crop_pct, cfg.image_size) == ("squash", 1.0, 384)
    with pytest.raises(ConfigError, match="crop_mode must be one of center, squash"):
        ModelConfig(crop_mode="border")
    with pytest.raises(ConfigError, match="data crop_mode must be one of center, squash"):
        ImageFolderDataModule(root="/nonexistent", crop_mode="warp")


@pytest.mark.parametrize("wh", [(500, 333), (300, 420)])
def test_squash_equals_the_official_replknet_transform(wh):
    rng = np.random.default_rng(0)
    img = Image.fromarray(rng.integers(0, 256, (wh[1], wh[0], 3), dtype=np.uint8))
    cfg = get_model_config("replknet_31l")
    ref = official_replknet_eval(384)(img)
    for transform in (eval_transform(cfg), robustness_eval_transform(cfg)):
        out = transform(img)
        assert out.shape == (3, 384, 384) and torch.equal(out, ref)
    # the default crop mode keeps the aspect ratio and crops: a different image
    centre = eval_transform(cfg.replace(crop_mode="center"))(img)
    assert centre.shape == (3, 384, 384) and not torch.equal(centre, ref)


@pytest.mark.slow
@pytest.mark.ffcv
def test_ffcv_validation_squash_resizes_the_whole_image(tmp_path):
    """FFCV validation with squash: each stored (non-square) image, whole, area-resized to the input square."""
    from lk_ablate.data.ffcv_resize import resize_crop_area  # numba: inside the test, not at collection

    rng = np.random.default_rng(0)
    sources = []
    for split in ("train", "val"):
        for c in range(2):
            d = tmp_path / "data" / split / f"n{c:08d}"
            d.mkdir(parents=True)
            for i, (h, w) in enumerate([(30, 50), (52, 36), (40, 41)]):
                img = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
                Image.fromarray(img).save(d / f"{i}.png")
                if split == "val":
                    sources.append(img)  # ImageFolder order: class, then file name
    res = write_ffcv(tmp_path / "data", tmp_path / "ffcv", cfg=WriterConfig(write_mode="raw", num_workers=1))
    batches = {}
    for mode in ("squash", "center"):
        dm = FFCVDataModule(res["train"]["path"], res["val"]["path"], batch_size=6, num_workers=1, input_size=24,
                            crop_pct=1.0, crop_mode=mode, mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0))
        dm.setup("fit")
        batches[mode] = next(iter(dm.val_dataloader()))[0]
    tmp = np.empty(3 * 24 * 64, np.float32)
    for i, img in enumerate(sources):
        want = np.empty((24, 24, 3), np.uint8)
        resize_crop_area(img, 0, img.shape[0], 0, img.shape[1], want, tmp)
        got = (batches["squash"][i].permute(1, 2, 0) * 255).round().to(torch.uint8).numpy()
        assert np.array_equal(got, want)
    assert not torch.equal(batches["squash"], batches["center"])
