"""GPU checks of the ImageNet path: bf16-mixed + channels_last + DDP through the CLI, and bf16 vs fp32 outputs.

    python benchmarks/gpu_check.py            # needs a CUDA GPU; prints a table
"""
from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))


def main() -> int:
    from helpers import make_image_folder

    import lightning as L

    import lk_ablate
    from lk_ablate.data import ImageFolderDataModule
    from lk_ablate.training import ImageClassifier

    assert torch.cuda.is_available(), "this check needs a CUDA GPU"
    name = torch.cuda.get_device_name()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        root = make_image_folder(Path(tmp) / "data", classes=10, per_class=70, size=256, ext="jpg")
        for model_name, k, kw in (("convnext_tiny", 31, {}), ("replknet_31b", [31, 29, 27, 13], {"small_kernel": 5})):
            # The ImageNet configs' recipe: bf16-mixed, channels_last, DDP strategy, EMA, mixup, RandAug.
            module = ImageClassifier(model_name, kernel_size=k, num_classes=10, model_kwargs=kw,
                                     drop_path_rate=0.1, channels_last=True)
            data = ImageFolderDataModule(str(root), batch_size=64, num_workers=8)
            trainer = L.Trainer(accelerator="gpu", devices=1, strategy="ddp", precision="bf16-mixed", max_epochs=2,
                                logger=False, enable_checkpointing=False, enable_progress_bar=False,
                                use_distributed_sampler=False, num_sanity_val_steps=0)
            t0 = time.perf_counter()
            trainer.fit(module, data)
            dt = time.perf_counter() - t0
            acc = float(trainer.callback_metrics.get("val/top1", float("nan")))
            rows.append((f"fit {model_name} k={k} (ddp, bf16-mixed, channels_last, 2 epochs x 10 steps of 64)",
                         f"val/top1 {acc:.3f}, loss finite {bool(torch.isfinite(trainer.callback_metrics['val/loss']))}",
                         dt))
    print(f"\n{name}")
    print(f"| check | result | seconds |\n|---|---|---|")
    for r in rows:
        print(f"| {r[0]} | {r[1]} | {r[2]:.1f} |")

    print("\n| model | kernel | bf16 vs fp32 logits ||a-b||/||b|| | same argmax |\n|---|---|---|---|")
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cuda.matmul.allow_tf32 = False
    for model_name, k in (("convnext_tiny", 7), ("convnext_tiny", 51), ("replknet_31b", [31, 29, 27, 13])):
        torch.manual_seed(0)
        m = lk_ablate.create_model(model_name, kernel_size=k).cuda().eval().to(memory_format=torch.channels_last)
        x = torch.randn(32, 3, 224, 224, device="cuda").contiguous(memory_format=torch.channels_last)
        with torch.no_grad():
            ref = m(x).float()
            with torch.autocast("cuda", dtype=torch.bfloat16):
                low = m(x).float()
        rel = (torch.linalg.norm(low - ref) / torch.linalg.norm(ref)).item()
        same = (low.argmax(1) == ref.argmax(1)).float().mean().item()
        print(f"| {model_name} | {k} | {rel:.2e} | {same * 100:.0f}% |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
