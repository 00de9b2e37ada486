"""`--config paper` computes what the paper's released scripts (github.com/Lauch1ng/LKRobust) compute.

Each oracle below re-writes the released formula directly (sequential block lists, numpy-style loops), never
through lk_ablate's own functions, and is compared with the analysis on a tiny model, norm-wise.
"""
from __future__ import annotations

import math
import random

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from lk_ablate.analysis.runner import load_preset, section_config
from lk_ablate.analysis import run_analyses
from lk_ablate.analysis.features import FeatureVarianceConfig
from lk_ablate.analysis.features import run as run_features
from lk_ablate.models.registry import IMAGENET_MEAN, IMAGENET_STD, ModelConfig
from lk_ablate.models.replknet import RepLKNet

PAPER = load_preset("paper")


def rel(a, b) -> float:
    a, b = torch.as_tensor(a, dtype=torch.float64), torch.as_tensor(b, dtype=torch.float64)
    return float((a - b).norm() / b.norm())


def small_replknet(seed: int = 0, layers=(1, 1, 2, 1)) -> RepLKNet:
    torch.manual_seed(seed)
    m = RepLKNet(kernel_size=(7, 5, 5, 5), layers=layers, channels=(8, 16, 16, 32), small_kernel=3,
                 num_classes=10).eval()
    with torch.no_grad():
        for mod in m.modules():
            if isinstance(mod, nn.BatchNorm2d):
                mod.running_mean.uniform_(-0.5, 0.5)
                mod.running_var.uniform_(0.5, 2.0)
                mod.weight.uniform_(0.5, 1.5)
    return m


# --- feature-map variance (feature_map_variance/main.py) ----------------------------------------------------
POOL, BS, SWEEPS = 12, 4, 3


def released_feature_variance(blocks, images, vit: bool) -> torch.Tensor:
    """main.py:175-236 with dataset_size POOL, batch_size BS, num_sweep SWEEPS."""
    torch.random.manual_seed(0)
    perms = [torch.randperm(POOL) for _ in range(SWEEPS)]
    latents = []
    with torch.no_grad():
        for sweep in range(SWEEPS):
            sub = images[perms[sweep]]
            for start in range(0, POOL, BS):
                xs = sub[start:start + BS]
                latents_item = []
                for block in blocks:
                    xs = block(xs)
                    latents_item.append(torch.mean(xs, dim=0))
            latents.append(latents_item)  # only the last batch's record survives
    latents = [torch.stack([latents[s][i] for s in range(SWEEPS)]) for i in range(len(latents[0]))]
    if vit:
        latents = [lat[:, 1:] for lat in latents]
    latents = latents[:-1]
    out = []
    for lat in latents:
        if lat.dim() == 3:
            b, n, c = lat.shape
            h = int(math.sqrt(n))
            lat = lat.reshape(b, h, h, c).permute(0, 3, 1, 2)
        out.append(lat.var(dim=[-1, -2]).mean(dim=[0, 1]))
    return torch.stack(out)


class _Residual(nn.Module):
    def __init__(self, *fn):
        super().__init__()
        self.fn = nn.Sequential(*fn)

    def forward(self, x):
        return self.fn(x) + x


class _ViTEmbed(nn.Module):
    def __init__(self, vit):
        super().__init__()
        self.vit = vit

    def forward(self, x):
        x = self.vit.patch_embed(x)
        if x.dim() == 4:  # dynamic_img_size: NHWC
            x = x.flatten(1, 2)
        x = torch.cat((self.vit.cls_token.expand(x.shape[0], -1, -1), x), dim=1)
        return self.vit.pos_drop(x + self.vit.pos_embed)


def _paper_features(**over) -> FeatureVarianceConfig:
    section = {**PAPER["feature_variance"], "pool_size": POOL, "batch_mean_size": BS, "sweeps": SWEEPS, **over}
    return section_config("feature_variance", section)


def _batches(images, bs=5):
    labels = torch.zeros(images.shape[0], dtype=torch.long)
    return [(images[i:i + bs], labels[i:i + bs]) for i in range(0, images.shape[0], bs)]


def test_paper_feature_variance_equals_released_script_on_replknet():
    m = small_replknet()
    torch.manual_seed(1)
    images = torch.randn(POOL + 3, 3, 64, 64)  # the pool is the first POOL images the source yields
    ours = run_features(m, _paper_features(), _batches(images))
    blocks = [*m.stem, *m.stages[0].blocks, *m.transitions[0], *m.stages[1].blocks, *m.transitions[1],
              *m.stages[2].blocks, *m.transitions[2], *m.stages[3].blocks]
    expected = released_feature_variance(blocks, images[:POOL], vit=False)
    got = torch.tensor([lay["variance"] for lay in ours["layers"]])
    assert len(got) == len(blocks) - 1 == 19  # the final ConvFFN is left out, as released
    assert rel(got, expected) < 1e-5
    assert ours["images"] == SWEEPS * BS


@pytest.mark.parametrize("dynamic", [False, True])
def test_paper_feature_variance_equals_released_script_on_timm_vit(dynamic):
    import timm

    torch.manual_seed(0)
    vit = timm.create_model("vit_base_patch16_224", pretrained=False, depth=2, embed_dim=32, num_heads=2,
                            img_size=64, dynamic_img_size=dynamic).eval()
    torch.manual_seed(2)
    images = torch.randn(POOL, 3, 64, 64)
    ours = run_features(vit, _paper_features(), _batches(images))
    blocks = [_ViTEmbed(vit),
              *[r for b in vit.blocks for r in (_Residual(b.norm1, b.attn), _Residual(b.norm2, b.mlp))],
              nn.Sequential(vit.norm, nn.Identity())]  # the head entry, dropped as released
    expected = released_feature_variance(blocks, images, vit=True)
    assert [lay["name"] for lay in ours["layers"]] == ["pos_embed", "blocks.0.attn", "blocks.0.mlp",
                                                      "blocks.1.attn", "blocks.1.mlp"]
    assert rel([lay["variance"] for lay in ours["layers"]], expected) < 1e-5


def test_paper_feature_variance_on_timm_resnet_records_stem_and_blocks():
    import timm

    torch.manual_seed(0)
    r = timm.create_model("resnet18", pretrained=False, num_classes=10).eval()
    torch.manual_seed(3)
    images = torch.randn(POOL, 3, 96, 96)
    ours = run_features(r, _paper_features(), _batches(images))
    blocks = [nn.Sequential(r.conv1, r.bn1, r.act1, r.maxpool), *r.layer1, *r.layer2, *r.layer3, *r.layer4,
              nn.Sequential(r.global_pool, r.fc)]
    expected = released_feature_variance(blocks, images, vit=False)
    assert len(ours["layers"]) == 9 and rel([lay["variance"] for lay in ours["layers"]], expected) < 1e-5


def test_feature_variance_permutations_are_the_scripts_draws_and_need_the_pool():
    cfg = _paper_features()
    torch.manual_seed(0)
    expected = [torch.randperm(POOL)[8:].tolist() for _ in range(SWEEPS)]
    assert cfg.groups() == expected
    with pytest.raises(Exception, match="pool_size is 12 but the data source yielded 10"):
        run_features(small_replknet(), cfg, _batches(torch.randn(10, 3, 32, 32)))


# --- lesion (lession_study/main_lession_replk.py, engine.py evaluate_lession_replk) -------------------------
def released_lesion_logits(m: RepLKNet, images: torch.Tensor, delete_index, block_nums) -> torch.Tensor:
    """engine.py:238-256 (+ the head): units in delete_index are skipped, counted over all stages."""
    x = m.stem[0](images)
    for stem_layer in m.stem[1:]:
        x = stem_layer(x)
    i = 0
    for stage_idx in range(len(block_nums)):
        for block_idx in range(block_nums[stage_idx]):
            if i not in delete_index:
                x = m.stages[stage_idx].blocks[block_idx * 2](x)
                x = m.stages[stage_idx].blocks[block_idx * 2 + 1](x)
            i += 1
        if stage_idx < len(block_nums) - 1:
            x = m.transitions[stage_idx](x)
    return m.forward_head(x)


def test_paper_lesion_draws_third_stage_units_and_scores_the_released_forward():
    from lk_ablate.analysis.lesion import run as run_lesion

    layers = (1, 1, 3, 1)
    m = small_replknet(layers=layers)
    torch.manual_seed(4)
    x = torch.randn(8, 3, 64, 64)
    with torch.no_grad():
        y = m(x).argmax(1)
        y[:3] = (y[:3] + 1) % 10  # some wrong labels, so the accuracy is not trivially 100
    cfg = section_config("lesion", {**PAPER["lesion"], "ns": [1, 2], "samples": 3})
    res = run_lesion(m, cfg, [(x[:5], y[:5]), (x[5:], y[5:])])
    assert res["candidates"] == [2, 3, 4]  # the third stage's units
    rng = random.Random(0)
    with torch.no_grad():
        for point in res["points"]:
            draws = [sorted(rng.sample(range(2, 5), point["n"])) for _ in range(3)]
            assert point["removed"] == draws
            expected = [100.0 * float((released_lesion_logits(m, x, d, layers).argmax(1) == y).double().mean())
                        for d in draws]
            assert point["accuracies"] == pytest.approx(expected, abs=1e-9)


def test_paper_lesion_on_replknet_31b_is_range_4_22_and_vit_keeps_every_block():
    import timm

    from lk_ablate import create_model
    from lk_ablate.analysis.lesion import residual_units, unit_stages

    with torch.device("meta"):
        m = create_model("replknet_31b")
    stages = unit_stages(m, residual_units(m))
    assert [i for i, s in enumerate(stages) if s in PAPER["lesion"]["candidate_stages"]] == list(range(4, 22))
    vit = timm.create_model("vit_base_patch16_224", pretrained=False, depth=3, embed_dim=32, num_heads=2,
                            img_size=32, num_classes=10).eval()
    assert unit_stages(vit, residual_units(vit)) is None  # no stages: every block is a candidate
    from lk_ablate.analysis.lesion import run as run_lesion

    cfg = section_config("lesion", {**PAPER["lesion"], "ns": [1], "samples": 2})
    res = run_lesion(vit, cfg, [(torch.randn(2, 3, 32, 32), torch.tensor([0, 1]))])
    assert res["candidates"] == [0, 1, 2]  # as the released evaluate_lession_vit: any block


# --- TAIG (adversarial_attack/TAIG/TAIG_attack.py, TAIG_test.py) ---------------------------------------------
def released_taig(sur: nn.Module, target: nn.Module, items, epsilon: float, niters: int, steps: int):
    """TAIG_attack.py (r_flag False: the straight path) then TAIG_test.py's trans_hh, on (path, label) items:
    (attacked images, saved uint8 adversarial images, target input of those, success rate %)."""
    import numpy as np
    import torchvision.transforms as T
    from PIL import Image

    trans = T.Compose([T.Resize((256, 256)), T.CenterCrop((224, 224)), T.ToTensor()])
    ori_img = torch.stack([trans(Image.open(p).convert("RGB")) for p, _ in items])
    label = torch.tensor([lab for _, lab in items])
    model = nn.Sequential(T.Resize((224, 224)), T.Normalize(IMAGENET_MEAN, IMAGENET_STD), sur)
    img = ori_img.clone()
    for _ in range(niters):
        igs = []
        for im_i in range(img.shape[0]):
            inputs = img[im_i].detach().numpy()
            baseline = np.zeros(inputs.shape)
            scaled = np.asarray([baseline + (float(i) / steps) * (inputs - baseline) for i in range(steps + 1)])
            scaled = torch.from_numpy(scaled).to(dtype=torch.float).requires_grad_(True)
            loss = -torch.mean(model(scaled)[:, label[im_i]])
            loss.backward()
            igs.append(((scaled[-1] - scaled[0]) * torch.mean(scaled.grad, dim=0)).detach().numpy())
        img = img.data + 1. / 255 * torch.sign(torch.from_numpy(np.array(igs)))
        img = torch.where(img > ori_img + epsilon, ori_img + epsilon, img)
        img = torch.where(img < ori_img - epsilon, ori_img - epsilon, img)
        img = torch.clamp(img, min=0, max=1)
    saved = torch.round(img.data * 255).numpy().astype(np.uint8)
    trans_hh = T.Compose([T.Resize(256, interpolation=T.InterpolationMode.BICUBIC, antialias=False),
                          T.CenterCrop(224), T.Normalize(IMAGENET_MEAN, IMAGENET_STD)])
    target_in = trans_hh(torch.from_numpy(saved).float() / 255)
    with torch.no_grad():
        pred = target(target_in).argmax(1)
    return ori_img, torch.from_numpy(saved), target_in, round(100. * (label != pred).sum().item() / len(items), 2)


def _tiny_net(seed: int, classes: int = 4) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(3, 6, 8, stride=8), nn.GELU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         nn.Linear(6, classes)).eval()


def test_paper_taig_equals_released_attack_and_test_on_a_fixed_list(tmp_path):
    from helpers import make_image_folder

    from lk_ablate.analysis.attacks import (pixel_model, run_taig, taig, taig_image_list,
                                            taig_pixel_batches, target_input)

    from PIL import Image

    make_image_folder(tmp_path, classes=4, per_class=4, size=40, splits=("val",))
    val = tmp_path / "val"
    for f in val.glob("*/*.png"):  # not square, so the attack's squash differs from a shorter-side resize
        Image.open(f).resize((52, 34)).save(f)
    classes = sorted(p.name for p in val.iterdir())
    rows = [(2, 0), (0, 1), (3, 3), (1, 2), (0, 0), (2, 2)]  # (class, image): a shuffled list, as the CSV
    csv_path = tmp_path / "selected_images.csv"
    csv_path.write_text("class_index,class,image_name\n" + "".join(
        f"{c},{classes[c]},val_{c}_{i}.png\n" for c, i in rows))
    items = [(str(val / classes[c] / f"val_{c}_{i}.png"), c) for c, i in rows]
    assert taig_image_list(val, csv_path) == items
    sur, target = _tiny_net(0), _tiny_net(1)
    sur_cfg = ModelConfig(mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5), num_classes=4)  # a ViT-like config, overridden
    cfg = section_config("taig", {**PAPER["taig"], "iterations": 3, "ig_steps": 4, "variant": "S", "num_workers": 0,
                                "batch_size": 4, "imagenet_val": str(val), "image_list_path": str(csv_path)})
    assert cfg.eps == pytest.approx((8 / 255, 16 / 255, 0.1))
    res = run_taig(target, cfg, None, ModelConfig(num_classes=4), surrogate=(sur, sur_cfg, "tiny"))
    assert res["images"] == 6 and res["surrogate_mean_std"] == [list(IMAGENET_MEAN), list(IMAGENET_STD)]
    released = [released_taig(sur, target, items, e, 3, 4) for e in cfg.eps]
    assert [round(p["success_rate"], 2) for p in res["points"]] == [r[3] for r in released]
    # the pieces, tensor by tensor: attacked images, adversarial images, the target's input
    pix, labels = (torch.cat(t) for t in zip(*taig_pixel_batches(cfg)))
    assert torch.equal(pix, released[0][0])
    sur_fn = pixel_model(sur, sur_cfg.replace(mean=IMAGENET_MEAN, std=IMAGENET_STD))
    for eps, (_, saved, target_in, _) in zip(cfg.eps, released):
        adv = taig(sur_fn, pix, labels, eps, 3, 1 / 255, 4, random_path=False)
        assert torch.equal(torch.round(adv * 255).to(torch.uint8), saved)
        assert rel(target_input(adv, ModelConfig(num_classes=4), "resize_crop"), target_in) < 1e-6


def test_taig_own_list_is_seeded_five_per_class(tmp_path):
    from helpers import make_image_folder

    from lk_ablate.analysis.attacks import taig_image_list

    make_image_folder(tmp_path, classes=3, per_class=7, size=8, splits=("val",))
    val = tmp_path / "val"
    rng = random.Random(0)
    expected = []
    for c, d in enumerate(sorted(val.iterdir())):
        files = sorted(p.name for p in d.iterdir())
        expected += [(str(d / f), c) for f in rng.sample(files, 5)]
    assert taig_image_list(val) == expected


# --- frequency noise (Park & Kim, how-do-vits-work ops/adversarial.py Random + FreqAttack) -------------------
def released_freq_attack(xs: torch.Tensor, noise_sign: torch.Tensor, eps: float, f: float, s: float) -> torch.Tensor:
    """FreqAttack(Random(eps), f=f, s=s)(xs): the Random attack's eps * sign(randn), then _fourier_mask."""
    b, c, h, w = xs.shape
    xs_adv = xs + eps * noise_sign

    def center_mask(w1, w2):
        w1 = w2 if w1 > w2 else w1
        w1 = 0 if w1 < 0 else w1
        return F.pad(torch.ones([1, c, w1, w1]), [int((w2 - w1) / 2)] * 4)

    x = torch.roll(torch.fft.fft2(xs_adv - xs), shifts=(int(h / 2), int(w / 2)), dims=(2, 3))
    mask = center_mask(int(((f + s) * h) / (2 * math.pi)) * 2, h) - center_mask(int(((f - s) * h) / (2 * math.pi)) * 2, h)
    x = (mask * x.abs()) * torch.exp(torch.complex(torch.zeros(b, c, h, w), torch.ones(b, c, h, w)) * x.angle())
    x = torch.fft.ifft2(torch.roll(x, shifts=(int(h / 2), int(w / 2)), dims=(2, 3)))
    return xs + x.real


def test_paper_frequency_bands_are_freq_attacks_centred_from_0_to_pi():
    from lk_ablate.analysis.frequency import FrequencyNoiseConfig
    from lk_ablate.analysis.frequency import run as run_frequency

    cfg = section_config("frequency", {**PAPER["frequency"], "seed": 5})
    assert list(cfg.centers) == pytest.approx([0.1 * i for i in range(11)]) and 0.7 in cfg.centers
    torch.manual_seed(3)
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 32 * 32, 10)).eval()
    x = torch.randn(16, 3, 32, 32)
    with torch.no_grad():
        y = model(x).argmax(1)
    out = run_frequency(model, cfg, [(x[:10], y[:10]), (x[10:], y[10:])], ModelConfig(input_size=(3, 32, 32)))
    ref = torch.Generator().manual_seed(5)
    correct = [0] * 11
    for xb, yb in [(x[:10], y[:10]), (x[10:], y[10:])]:
        for k, c in enumerate(cfg.centers):
            sign = torch.randn(tuple(xb.shape), generator=ref).sign()
            noisy = released_freq_attack(xb, sign, cfg.amplitude, c * math.pi, cfg.window / 2 * math.pi)
            with torch.no_grad():
                correct[k] += int((model(noisy).argmax(1) == yb).sum())
    assert [b["accuracy"] for b in out["bands"]] == pytest.approx([100.0 * k / 16 for k in correct], abs=1e-9)
    assert [b["center"] for b in out["bands"]] == list(cfg.centers)
    assert len({b["accuracy"] for b in out["bands"]}) > 2  # the bands differ, so the comparison means something
    # the noise itself, norm-wise, for the 224 px images of the paper
    from lk_ablate.analysis.frequency import band_masks, masked_noise

    for c in (0.0, 0.7, 1.0):
        g1, g2 = torch.Generator().manual_seed(1), torch.Generator().manual_seed(1)
        ours = masked_noise((2, 3, 224, 224), band_masks(FrequencyNoiseConfig(layout="centered", centers=(c,)), 224, 224)[0],
                            0.1, "pre_filter", g1)
        z = torch.zeros(2, 3, 224, 224)
        theirs = released_freq_attack(z, torch.randn((2, 3, 224, 224), generator=g2).sign(), 0.1, c * math.pi,
                                      0.05 * math.pi)
        assert rel(ours, theirs) < 1e-5


# --- ImageNet-P (hendrycks/robustness ImageNet-P/test.py) ---------------------------------------------------
def hendrycks_flip_prob(predictions, noise_perturbation: bool, difficulty: int) -> float:
    """test.py:257-272."""
    import numpy as np

    result = 0
    step_size = 1 if noise_perturbation else difficulty
    for vid_preds in predictions:
        result_for_vid = []
        for i in range(step_size):
            prev_pred = vid_preds[i]
            for pred in vid_preds[i::step_size][1:]:
                result_for_vid.append(int(prev_pred != pred))
                if not noise_perturbation:
                    prev_pred = pred
        result += np.mean(result_for_vid) / len(predictions)
    return result


def hendrycks_top5(ranks, noise_perturbation: bool, difficulty: int) -> float:
    """test.py:215-254 (mode top5)."""
    import numpy as np

    cum_sum_top5 = np.cumsum(np.asarray([0] + [1] * 5 + [0] * (ranks.shape[-1] - 1 - 5)))
    result = 0
    step_size = 1 if noise_perturbation else difficulty
    for vid_ranks in ranks:
        result_for_vid = []
        for i in range(step_size):
            perm1 = vid_ranks[i]
            perm1_inv = np.argsort(perm1)
            for rank in vid_ranks[i::step_size][1:]:
                sigma = rank[perm1_inv]
                result_for_vid.append(np.sum(np.abs(cum_sum_top5[:5] - cum_sum_top5[sigma - 1][:5])))
                if not noise_perturbation:
                    perm1 = rank
                    perm1_inv = np.argsort(perm1)
        result += np.mean(result_for_vid) / len(ranks)
    return result


@pytest.mark.parametrize("difficulty", [1, 2, 3])
@pytest.mark.parametrize("noise", [False, True])
def test_imagenet_p_metrics_equal_hendrycks_at_every_difficulty(difficulty, noise):
    import numpy as np
    from scipy.stats import rankdata

    from lk_ablate.analysis.imagenet_p import flip_rate, top5_distance

    g = torch.Generator().manual_seed(difficulty)
    videos = [torch.randn(11, 20, generator=g).cumsum(0) for _ in range(4)]  # drifting logits: some flips
    stride = 1 if noise else difficulty
    fp = sum(flip_rate(v.argmax(1), noise, stride) for v in videos) / len(videos)
    t5 = sum(top5_distance(v, noise, stride) for v in videos) / len(videos)
    preds = [v.argmax(1).numpy() for v in videos]
    ranks = np.asarray([[rankdata(-f, method="ordinal").astype(np.int64) for f in v.numpy()] for v in videos])
    assert fp == pytest.approx(hendrycks_flip_prob(preds, noise, difficulty), abs=1e-12)
    assert t5 == pytest.approx(hendrycks_top5(ranks, noise, difficulty), abs=1e-12)
    assert 0 < fp < 1


def test_imagenet_p_run_uses_the_difficulty_as_frame_stride():
    from lk_ablate.analysis.imagenet_p import run as run_p

    torch.manual_seed(0)
    model = nn.Sequential(nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(12, 10)).eval()
    g = torch.Generator().manual_seed(1)
    vids = [torch.randint(0, 256, (9, 16, 16, 3), generator=g, dtype=torch.uint8) for _ in range(3)]
    cfg = ModelConfig(input_size=(3, 16, 16), num_classes=10)
    res = run_p(model, section_config("imagenet_p", {"root": "unused", "perturbations": ["translate"], "difficulty": 2}),
                None, cfg, videos={"translate": vids})
    with torch.no_grad():
        preds = [model(((v.permute(0, 3, 1, 2).float() / 255) - torch.tensor(cfg.mean).view(1, 3, 1, 1))
                       / torch.tensor(cfg.std).view(1, 3, 1, 1)).argmax(1).numpy() for v in vids]
    expected = hendrycks_flip_prob(preds, False, 2)
    assert res["perturbations"]["translate"]["flip_probability"] == pytest.approx(expected, abs=1e-12)
    assert expected != pytest.approx(hendrycks_flip_prob(preds, False, 1))


# --- per-analysis paper transforms ---------------------------------------------------------------------------
def test_paper_eval_specs_equal_the_released_transforms_for_every_model():
    import numpy as np
    import torchvision.transforms as T
    from PIL import Image

    from lk_ablate.analysis import attacks, features, frequency, imagenet9, imagenet_p, lesion, occlusion

    img = Image.fromarray(np.random.default_rng(0).integers(0, 256, (300, 410, 3), dtype=np.uint8))
    norm = T.Normalize(IMAGENET_MEAN, IMAGENET_STD)
    bicubic = T.Compose([T.Resize(256, interpolation=T.InterpolationMode.BICUBIC), T.CenterCrop(224), T.ToTensor(),
                         norm])  # adversarial_attack/utils.py, lession_study/utils.py get_imagenet_data
    bilinear = T.Compose([T.Resize(256), T.CenterCrop(224), T.ToTensor(), norm])  # feature variance, occlusion
    vit = ModelConfig(mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5), crop_pct=0.9)  # timm ViT-B's own config
    for module, released in [(features, bilinear), (occlusion, bilinear), (lesion, bicubic), (attacks, bicubic),
                             (frequency, bicubic)]:
        for cfg in (ModelConfig(), vit):
            assert torch.equal(module.paper_eval_spec(cfg).transform()(img), released(img)), module.__name__
    frames = Image.fromarray(np.random.default_rng(1).integers(0, 256, (224, 224, 3), dtype=np.uint8))
    for module in (imagenet_p, imagenet9):  # Hendrycks / MadryLab: ToTensor + ImageNet Normalize, no resize
        assert torch.equal(module.paper_eval_spec(vit).transform()(frames), T.Compose([T.ToTensor(), norm])(frames))
    # a 384 px model (31L, 384 fine-tunes): the scripts' 256/224 geometry scaled to 384, not squashed
    big = features.paper_eval_spec(ModelConfig(input_size=(3, 384, 384), crop_pct=1.0, crop_mode="squash"))
    assert (big.resize, big.crop, big.squash) == (438, (384, 384), False)


# --- kernel attention distance (kernel_attention_pattern/kernel_atten_dis.py) -------------------------------
def test_paper_kernel_distance_equals_released_script():
    import numpy as np

    from lk_ablate.analysis.kernel_distance import run as run_kernels

    m = small_replknet(layers=(1, 1, 2, 1))
    ours = run_kernels(m, section_config("kernel_distance", PAPER["kernel_distance"]))
    expected = []
    for stage, n_blocks in enumerate((1, 1, 2, 1)):  # kernel_atten_dis.py:45-68 with this model's depths
        for n in range(n_blocks):
            a = np.array(m.stages[stage].blocks[n * 2].large_kernel.lkb_origin.conv.weight.data.squeeze(1))
            R = (a.shape[-1] - 1) // 2  # rs = [15, 14, 13, 6] for kernels 31, 29, 27, 13
            distances = np.zeros_like(a)
            for i in range(a.shape[0]):
                for j in range(a.shape[1]):
                    for k in range(a.shape[2]):
                        distances[i, j, k] = np.sqrt((j - R) ** 2 + (k - R) ** 2) / (R * np.sqrt(2))
            expected.append(np.sort(np.sum(np.multiply(distances, np.abs(a)), axis=(1, 2))))
    assert len(ours["layers"]) == len(expected) == 5
    for layer, exp in zip(ours["layers"], expected):
        assert rel(layer["sorted"], exp) < 1e-6
