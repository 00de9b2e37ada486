"""FGSM / PGD / TAIG against cases worked out by hand on linear and quadratic models."""
import pytest
import torch
import torch.nn as nn

from lk_ablate.analysis.runner import load_preset, section_config
from lk_ablate.analysis import run_analyses
from lk_ablate.analysis.attacks import (fgsm, integrated_gradients,
                                        pgd, pgd_iterates, pixel_model, run_taig, taig)
from lk_ablate.analysis.common import from_pixels, to_pixels
from lk_ablate.base.errors import ConfigError
from lk_ablate.models.registry import ModelConfig

CFG = ModelConfig(input_size=(3, 4, 4), mean=(0.4, 0.5, 0.6), std=(0.2, 0.25, 0.5), num_classes=2)


class Linear2(nn.Module):
    """logits = W flatten(x) + b on the normalised input."""

    def __init__(self, w0: torch.Tensor, w1: torch.Tensor) -> None:
        super().__init__()
        self.fc = nn.Linear(w0.numel(), 2)
        with torch.no_grad():
            self.fc.weight.copy_(torch.stack([w0.flatten(), w1.flatten()]))
            self.fc.bias.zero_()

    def forward(self, x):
        return self.fc(x.flatten(1))


def _setup(seed=0):
    g = torch.Generator().manual_seed(seed)
    w0, w1 = torch.randn(3, 4, 4, generator=g), torch.randn(3, 4, 4, generator=g)
    pix = 0.3 + 0.4 * torch.rand(2, 3, 4, 4, generator=g)  # away from 0 and 1: no clamping for small eps
    return Linear2(w0, w1).eval(), w0, w1, pix, torch.zeros(2, dtype=torch.long)


@pytest.mark.parametrize("space", ["pixel", "normalized"])
def test_fgsm_on_linear_model_moves_along_sign_of_w1_minus_w0(space):
    # CE gradient for label 0: (p0 - 1) w0 + p1 w1 = p1 (w1 - w0), and d(normalised)/d(pixel) = 1/std > 0,
    # so the FGSM step is eps * sign(w1 - w0) in either space.
    model, w0, w1, pix, y = _setup()
    x = from_pixels(pix, CFG)
    eps = 0.05
    adv = fgsm(model, x, y, eps, CFG, space)
    base = pix if space == "pixel" else x
    got = to_pixels(adv, CFG) if space == "pixel" else adv
    expected = base + eps * (w1 - w0).sign().expand_as(base)
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-6)


def test_fgsm_pixel_space_clamps_to_unit_range():
    model, w0, w1, pix, y = _setup()
    adv = to_pixels(fgsm(model, from_pixels(pix, CFG), y, 0.9, CFG, "pixel"), CFG)
    expected = (pix + 0.9 * (w1 - w0).sign()).clamp(0, 1)
    torch.testing.assert_close(adv, expected, rtol=0, atol=1e-6)


@pytest.mark.parametrize("steps", [1, 3, 7])
def test_pgd_without_random_start_is_k_steps_then_projection(steps):
    model, w0, w1, pix, y = _setup(1)
    eps, alpha = 0.05, 0.02
    adv = to_pixels(pgd(model, from_pixels(pix, CFG), y, eps, alpha, steps, CFG, "pixel", random_start=False), CFG)
    expected = pix + min(steps * alpha, eps) * (w1 - w0).sign()
    torch.testing.assert_close(adv, expected, rtol=0, atol=1e-6)


def test_pgd_random_start_is_uniform_in_ball_then_steps():
    model, w0, w1, pix, y = _setup(2)
    eps, alpha, steps = 0.05, 0.0125, 3
    adv = to_pixels(pgd(model, from_pixels(pix, CFG), y, eps, alpha, steps, CFG, "pixel",
                        generator=torch.Generator().manual_seed(7)), CFG)
    u = (2 * torch.rand(pix.shape, generator=torch.Generator().manual_seed(7)) - 1) * eps
    delta = u
    for _ in range(steps):  # the gradient sign does not depend on the point for a linear model
        delta = (delta + alpha * (w1 - w0).sign()).clamp(-eps, eps)
    torch.testing.assert_close(adv, pix + delta, rtol=0, atol=1e-6)


def test_pgd_iterate_k_equals_pgd_with_k_steps():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.GELU(), nn.Flatten(), nn.Linear(64, 2)).eval()
    x, y = torch.randn(2, 3, 4, 4), torch.tensor([0, 1])
    its = pgd_iterates(model, x, y, 0.03, 0.01, 4, CFG, generator=torch.Generator().manual_seed(3))
    for k in (1, 4):
        one = pgd(model, x, y, 0.03, 0.01, k, CFG, generator=torch.Generator().manual_seed(3))
        torch.testing.assert_close(its[k - 1], one, rtol=0, atol=0)


def test_integrated_gradients_linear_and_quadratic():
    # linear score s(x) = a.x: IG = x * a; quadratic s(x) = c sum(x^2): the mean of the (S+1) path gradients
    # 2 c (i/S) x is c x, so IG = c x^2 and sums to s(x) - s(0) (completeness) exactly.
    x = torch.rand(2, 3, 4, 4)
    a = torch.randn(3, 4, 4)
    lab = torch.zeros(2, dtype=torch.long)
    lin = integrated_gradients(lambda z: (z * a).flatten(1).sum(1, keepdim=True), x, lab, steps=20)
    torch.testing.assert_close(lin, x * a, rtol=1e-6, atol=1e-6)
    quad = integrated_gradients(lambda z: 0.7 * z.pow(2).flatten(1).sum(1, keepdim=True), x, lab, steps=20, chunk=5)
    torch.testing.assert_close(quad, 0.7 * x.pow(2), rtol=1e-5, atol=1e-6)


def test_taig_straight_path_on_linear_model():
    # score_0 = w0.((x - m)/s): IG = x * w0 / s (baseline 0) > 0-sign = sign(w0) for x > 0, so each step lowers
    # x by step * sign(w0) until the eps-ball (no quantisation here).
    model, w0, w1, pix, y = _setup(3)
    fn = pixel_model(model, CFG)
    step, eps = 1 / 255, 4 / 255
    for iters in (1, 3, 6):
        adv = taig(fn, pix, y, eps, iterations=iters, step_size=step, ig_steps=5, random_path=False, quantize=False)
        expected = pix - min(iters * step, eps) * w0.sign()
        torch.testing.assert_close(adv, expected, rtol=0, atol=1e-6)
    q = taig(fn, pix, y, eps, iterations=2, step_size=step, ig_steps=5, random_path=False, quantize=True)
    torch.testing.assert_close(q, torch.round((pix - 2 * step * w0.sign()) * 255) / 255, rtol=0, atol=1e-7)


def test_taig_random_path_stays_in_eps_ball_and_unit_range():
    model, w0, w1, pix, y = _setup(4)
    eps = 0.03
    adv = taig(pixel_model(model, CFG), pix, y, eps, iterations=5, ig_steps=4, random_path=True,
               generator=torch.Generator().manual_seed(0))
    assert (adv - pix).abs().max() <= eps + 0.5 / 255 + 1e-6  # rounding to 8 bits moves at most half a level
    assert adv.min() >= 0 and adv.max() <= 1
    assert torch.equal(adv, torch.round(adv * 255) / 255)


def test_run_taig_success_rate_against_target_with_given_surrogate():
    # surrogate = target: a white-box attack with eps large enough flips every prediction of the linear model.
    model, w0, w1, pix, y = _setup(5)
    cfg = section_config("taig", {"eps": [0.5], "iterations": 40, "step_size": 0.02, "ig_steps": 3, "variant": "S",
                                "surrogate_timm": None, "surrogate_model": "x"})
    x = from_pixels(pix, CFG)
    clean_pred = model(x).argmax(1)
    res = run_taig(model, cfg, [(x, clean_pred)], CFG, surrogate=(model, CFG, "self"))
    assert res["clean_error"] == 0.0
    assert res["points"][0]["success_rate"] == 100.0
    assert res["points"][0]["surrogate_success_rate"] == 100.0


def test_taig_loads_timm_surrogate_from_checkpoint(tmp_path):
    import timm

    sur = timm.create_model("test_vit", pretrained=False)  # 1000 classes, like an ImageNet surrogate
    torch.save(sur.state_dict(), tmp_path / "sur.pth")
    target = nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, 10)).eval()
    cfg8 = ModelConfig(input_size=(3, 8, 8), num_classes=10)
    x, y = torch.randn(2, 3, 8, 8), torch.tensor([1, 2])
    out = run_analyses(target, {"taig": {"eps": [0.03], "iterations": 1, "ig_steps": 2, "surrogate_timm": "test_vit",
                                         "surrogate_path": str(tmp_path / "sur.pth")}}, [(x, y)], cfg8)
    assert out["taig"]["surrogate"] == "test_vit" and out["taig"]["images"] == 2


@pytest.mark.parametrize("section,msg", [
    ({"eps": []}, "at least one"), ({"space": "pixels"}, "space"), ({"epsilon": [0.1]}, "unknown key"),
])
def test_fgsm_config_errors(section, msg):
    with pytest.raises(ConfigError, match=msg):
        section_config("fgsm", section)


def test_pgd_presets_and_alpha():
    c = section_config("pgd", load_preset("paper_pgd_eps")["pgd"])
    assert c.eps == (0.002, 0.004, 0.006, 0.008) and c.steps == (5,) and c.step_size(0.004) == 0.001
    s = section_config("pgd", {**load_preset("paper_pgd_steps")["pgd"], "alpha": 0.001})
    assert s.eps == (0.006,) and s.steps == tuple(range(1, 11)) and s.step_size(0.006) == 0.001
    p = section_config("pgd", load_preset("paper")["pgd"])
    assert p.eps == (0.002, 0.004, 0.006, 0.008) and p.steps == tuple(range(1, 11))
    with pytest.raises(ConfigError, match=r"unknown key\(s\) \['preset'\] in config section 'pgd'"):
        section_config("pgd", {"preset": "paper_eps"})
    with pytest.raises(ConfigError, match="unknown preset 'nope'"):
        load_preset("nope")
    with pytest.raises(ConfigError, match="surrogate_path"):
        run_taig(nn.Identity(), section_config("taig", {}), [], CFG)
