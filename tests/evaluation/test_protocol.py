"""Named evaluation protocols end to end: ``protocol: model`` feeds each model its own eval transform,
``protocol: paper`` (``--preset paper``) the benchmark authors' / released scripts' transform, for robustness
and analyze. The oracles are the authors' torchvision pipelines written out here (hendrycks
natural-adv-examples eval.py / imagenet-r eval.py: Resize(256), CenterCrop(224), ToTensor, Normalize(ImageNet);
ImageNet-C test.py: CenterCrop(224), ToTensor, Normalize), never lk_ablate's EvalSpec."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn as nn
import torchvision.transforms as trn
import yaml
from PIL import Image
from helpers import write_demo_checkpoint
from test_robustness_support import benchmark_wnids

from lk_ablate.cli import main
from lk_ablate.evaluation import loading as eval_loading
from lk_ablate.models.registry import ModelConfig, get_model_config
from lk_ablate.robustness.benchmarks import build_benchmarks
from lk_ablate.robustness.evaluate import evaluate
from lk_ablate.base.results import read_results

IMAGENET = ([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])
BICUBIC = trn.InterpolationMode.BICUBIC


def random_tree(root, classes, size=(52, 44), per_class=1, seed=0):
    """root/<class>/<k>.JPEG with random content (so resize, crop, interpolation and normalisation all matter)."""
    rng = np.random.default_rng(seed)
    files = []
    for c in sorted(classes):
        (root / c).mkdir(parents=True, exist_ok=True)
        for k in range(per_class):
            p = root / c / f"{c}_{k}.JPEG"
            Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).save(p, quality=90)
            files.append(p)
    return files


def oracle(files, transform):
    return torch.stack([transform(Image.open(f).convert("RGB")) for f in files])


def rel(a, b):
    return float((a - b).norm() / b.norm())


class Spy(nn.Module):
    """A 1000-class model that records the batches it is fed; logits from a fixed map of the channel means."""

    def __init__(self, config):
        super().__init__()
        self.model_config = config
        self.fc = nn.Linear(3, 1000)
        self.seen = []

    def forward(self, x):
        self.seen.append(x.detach().clone())
        return self.fc(x.float().mean(dim=(2, 3)))


def hook_inputs(models, record):
    for w, m in models.items():
        m.register_forward_hook(lambda mod, args, out, w=w: record.append((w, args[0].detach().clone(),
                                                                           out.detach().clone())))


@pytest.fixture(scope="module")
def a_tree(tmp_path_factory):
    root = tmp_path_factory.mktemp("a") / "imagenet-a"
    return root, random_tree(root, benchmark_wnids("a"), size=(150, 130))


@pytest.mark.slow
def test_benchmark_protocols_feed_the_authors_or_the_models_transform(a_tree):
    root, files = a_tree
    # a ViT-like 224 model whose own config differs from the paper's in every respect
    spy = Spy(ModelConfig(crop_pct=0.9, mean=(0.5,) * 3, std=(0.5,) * 3, interpolation="bicubic"))
    fed = {}
    for protocol in ("model", "paper"):
        spy.seen = []
        results, errors = evaluate({"raw": spy}, spy.model_config, build_benchmarks(imagenet_a=str(root),
                                   protocol=protocol), batch_size=64, num_workers=0)
        assert errors == [] and results["raw"]["imagenet_a"]["n"] == 200
        fed[protocol] = torch.cat(spy.seen)
    hendrycks = trn.Compose([trn.Resize(256), trn.CenterCrop(224), trn.ToTensor(), trn.Normalize(*IMAGENET)])
    own = trn.Compose([trn.Resize(248, interpolation=BICUBIC), trn.CenterCrop(224), trn.ToTensor(),  # 224/0.9
                       trn.Normalize((0.5,) * 3, (0.5,) * 3)])
    assert torch.equal(fed["paper"], oracle(files, hendrycks))
    assert torch.equal(fed["model"], oracle(files, own))
    assert rel(fed["model"], fed["paper"]) > 0.1  # the switch matters


def test_paper_protocol_at_other_input_sizes_and_imagenet_c(a_tree):
    root, files = a_tree
    img = Image.open(files[0]).convert("RGB")
    c = build_benchmarks(imagenet_c="/c", corruptions=["fog"], severities=[5], protocol="paper")[0].parts[0]
    a = build_benchmarks(imagenet_a=str(root), protocol="paper")[0].parts[0]
    c224 = Image.fromarray(np.random.default_rng(1).integers(0, 256, (224, 224, 3), dtype=np.uint8))
    test_py = trn.Compose([trn.CenterCrop(224), trn.ToTensor(), trn.Normalize(*IMAGENET)])
    for name in ("replknet_31l", "replknet_xl", "convnext_tiny"):
        cfg = get_model_config(name)
        s = cfg.image_size
        # A/R/O/val: Hendrycks' geometry scaled to the model's side: floor(s * 256 / 224), bilinear, ImageNet
        # mean/std (31L 384 -> 438/384, XL 320 -> 365/320, 224 -> 256/224); the official 31L squash is not used.
        scaled = trn.Compose([trn.Resize(s * 256 // 224), trn.CenterCrop(s), trn.ToTensor(),
                              trn.Normalize(*IMAGENET)])
        assert torch.equal(a.spec(cfg).transform()(img), scaled(img)), name
        # ImageNet-C: the released 224 px images as they are, whatever the model's size
        assert torch.equal(c.spec(cfg).transform()(c224), test_py(c224)), name
    assert (a.spec(get_model_config("replknet_31l")).resize, a.spec(get_model_config("replknet_xl")).resize) == \
        (438, 365)
    assert a.spec(get_model_config("replknet_31l")).squash is False


def _demo_ckpt(path, num_classes=1000, seed=0):
    write_demo_checkpoint(path, num_classes=num_classes, seed=seed)
    return path


@pytest.fixture
def recorded(monkeypatch):
    """Every forward of the models the commands load: (weights, input, logits)."""
    record = []
    real = eval_loading.load_for_eval

    def spying(*args, **kwargs):
        out = real(*args, **kwargs)
        hook_inputs(out.models, record)
        return out

    import lk_ablate.robustness.score as score

    monkeypatch.setattr(score, "load_for_eval", spying)
    monkeypatch.setattr(eval_loading, "load_for_eval", spying)  # `analyze` imports it when it runs
    return record


@pytest.mark.slow
def test_robustness_preset_paper_end_to_end(tmp_path, a_tree, recorded):
    root, files = a_tree
    ckpt = _demo_ckpt(tmp_path / "demo.ckpt")
    common = ["--ckpt_path", str(ckpt), "--weights", "raw", "--data.imagenet_a", str(root),
              "--data.num_workers", "0", "--data.batch_size", "200", "--device", "cpu"]
    assert main(["robustness", *common, "--results_path", str(tmp_path / "model.json")]) == 0
    assert main(["robustness", "--preset", "paper", *common, "--results_path", str(tmp_path / "paper.json"),
                 "--data.on_bad_image", "skip"]) == 0
    (_, x_model, _), (_, x_paper, _) = recorded
    # convnext_demo: 32 px, crop_pct 1.0, bilinear, its own mean/std; paper: 36/32 bilinear, ImageNet mean/std
    cfg = get_model_config("convnext_demo")
    own = trn.Compose([trn.Resize(32), trn.CenterCrop(32), trn.ToTensor(),
                       trn.Normalize(cfg.mean, cfg.std)])
    paper = trn.Compose([trn.Resize(36), trn.CenterCrop(32), trn.ToTensor(), trn.Normalize(*IMAGENET)])
    assert torch.equal(x_model, oracle(files, own)) and torch.equal(x_paper, oracle(files, paper))
    m, p = read_results(tmp_path / "model.json"), read_results(tmp_path / "paper.json")
    assert m["settings"]["protocol"] == "model" and p["settings"]["protocol"] == "paper"
    assert (m["settings"]["scoring"]["on_bad_image"], p["settings"]["scoring"]["on_bad_image"]) == ("error", "skip")
    assert p["weights"]["raw"]["imagenet_a"]["n"] == 200
    from lk_ablate.base.results import flatten_metrics  # W&B / logger keys: never the same for two protocols

    assert "robust/imagenet_a/top1" in flatten_metrics(m)
    assert {k.split("/")[1] for k in flatten_metrics(p)} == {"imagenet_a@paper"}


def test_analyze_protocol_paper_reads_each_analysis_transform(tmp_path, recorded):
    classes = [f"n{c:08d}" for c in range(10)]
    files = random_tree(tmp_path / "val", classes, size=(50, 41), per_class=2, seed=3)
    ckpt = _demo_ckpt(tmp_path / "k3.ckpt", num_classes=10)
    base = ["--ckpt_path", str(ckpt), "--data.imagenet_val", str(tmp_path / "val"), "--data.batch_size", "20",
            "--data.num_workers", "0", "--fgsm.eps", "[0.01]", "--device", "cpu"]
    assert main(["analyze", "fgsm", *base, "--results_path", str(tmp_path / "model.json")]) == 0
    n_model = len(recorded)
    assert main(["analyze", "fgsm", "--preset", "paper", *base, "--results_path", str(tmp_path / "paper.json")]) == 0
    # FGSM: clean forward, attack forward, adversarial forward; the clean batch comes first
    x_model, x_paper = recorded[0][1], recorded[n_model][1]
    cfg = get_model_config("convnext_demo")
    own = trn.Compose([trn.Resize(32), trn.CenterCrop(32), trn.ToTensor(), trn.Normalize(cfg.mean, cfg.std)])
    # adversarial_attack/utils.py (LKRobust): Resize(256, bicubic), CenterCrop(224), ImageNet; scaled to 32 px
    released = trn.Compose([trn.Resize(32 * 256 // 224, interpolation=BICUBIC), trn.CenterCrop(32), trn.ToTensor(),
                            trn.Normalize(*IMAGENET)])
    assert torch.equal(x_model, oracle(files, own)) and torch.equal(x_paper, oracle(files, released))
    assert read_results(tmp_path / "model.json")["analyses"]["fgsm"]["protocol"] == "model"
    assert read_results(tmp_path / "paper.json")["analyses"]["fgsm"]["protocol"] == "paper"


def test_runner_passes_the_paper_specs_model_config(monkeypatch):
    """Under paper an analysis gets the model config of its transform (mean/std/size), and a module without
    ``paper_eval_spec`` falls back to the model's own transform."""
    from lk_ablate.analysis import runner
    from lk_ablate.data.transforms import EvalSpec

    cfg = get_model_config("replknet_xl")  # mean = std = 0.5, 320 px
    spec = runner.eval_spec_for("fgsm", cfg, "paper")
    assert (spec.mean, spec.std, spec.crop, spec.resize) == (tuple(IMAGENET[0]), tuple(IMAGENET[1]), (320, 320), 365)
    mc = runner.input_config(cfg, spec)
    assert (mc.mean, mc.std, mc.input_size) == (spec.mean, spec.std, (3, 320, 320))
    assert runner.eval_spec_for("fgsm", cfg, "model") == EvalSpec.from_model_config(cfg)
    import lk_ablate.analysis.frequency as frequency

    monkeypatch.delattr(frequency, "paper_eval_spec", raising=False)
    assert runner.eval_spec_for("frequency", cfg, "paper") == EvalSpec.from_model_config(cfg)


@pytest.mark.parametrize("command,argv,message", [
    ("robustness", ["--kernel-size", "31"], "unrecognized arguments: --kernel-size 31 (see `lk_ablate robustness --help`)"),
    ("robustness", ["--model.ckpt", "x.ckpt"], "(see `lk_ablate robustness --help`)"),
    ("analyze", ["fgsm", "--workers", "0"], "unrecognized arguments: --workers 0 (see `lk_ablate analyze fgsm --help`)"),
    ("analyze", ["fgsm", "--occlusion.levels", "[0.1]"], "(see `lk_ablate analyze fgsm --help`)"),
    ("analyze", ["fgsm", "--weights", "both", "--model.model_name", "convnext_demo"],
     "analyze runs on one weight set: --weights auto"),
    ("analyze", ["nope"], "invalid choice: 'nope'"),
])
def test_bad_options_are_one_line_with_the_help_to_read(command, argv, message, capsys):
    """No shims for earlier spellings: an option the command does not have is jsonargparse's error, one line, with
    the `--help` that lists the command's options (an analysis's own for `analyze NAME`)."""
    assert main([command, *argv]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("lk_ablate: error: ") and message in err[0], err


@pytest.mark.parametrize("command", [["robustness"], ["analyze", "all"], ["analyze", "fgsm"]])
def test_print_config_round_trip(command, tmp_path, capsys):
    def printed(*args):
        with pytest.raises(SystemExit) as e:
            main([*command, *args, "--print_config"])
        assert e.value.code in (0, None)
        return capsys.readouterr().out

    first = printed("--preset", "paper", "--model.kernel_size", "[31,29,27,13]", "--data.batch_size", "8",
                    "--model.model_name", "replknet_31b")
    cfg = yaml.safe_load(first)
    assert cfg["protocol"] == "paper" and cfg["model"]["kernel_size"] == [31, 29, 27, 13]
    assert cfg["data"]["batch_size"] == 8
    if command == ["analyze", "fgsm"]:  # the paper preset's fgsm section only (the parser has no other)
        assert cfg["fgsm"]["eps"] == [0.1, 0.2, 0.3, 0.4] and "occlusion" not in cfg and cfg["preset"] == ["paper"]
    if command == ["analyze", "all"]:  # the preset's sections, a dotted override over them
        first = printed("--preset", "paper", "--model.kernel_size", "[31,29,27,13]", "--data.batch_size", "8",
                        "--model.model_name", "replknet_31b", "--occlusion.levels", "[0.1,0.5]")
        cfg = yaml.safe_load(first)
        assert cfg["fgsm"]["eps"] == [0.1, 0.2, 0.3, 0.4] and "preset" not in cfg["fgsm"]
        assert cfg["occlusion"]["levels"] == [0.1, 0.5] and cfg["occlusion"]["patch_size"] == 16
    (tmp_path / "c.yaml").write_text(first)
    assert printed("--config", str(tmp_path / "c.yaml")) == first


def test_fit_config_as_config_and_unknown_preset(tmp_path, capsys):
    fit = tmp_path / "fit.yaml"
    fit.write_text(yaml.safe_dump({"trainer": {"max_epochs": 1}, "model": {"model_name": "convnext_demo"}}))
    assert main(["robustness", "--config", str(fit)]) == 2
    assert f"pass it as --fit_config {fit}" in capsys.readouterr().err
    assert main(["analyze", "fgsm", "--preset", "nope"]) == 2
    assert "unknown preset 'nope'; shipped presets: paper" in capsys.readouterr().err
    assert main(["robustness", "--protocol", "papr"]) == 2
    assert "protocol" in capsys.readouterr().err



def test_report_keeps_protocols_apart(tmp_path):
    """Two seeds scored under `model` and one under `paper`: the paper numbers are their own column and plot
    (never averaged with the model-protocol ones); entries without a protocol read as `model`."""
    from lk_ablate.report import build_report, column_label
    from lk_ablate.base.results import make_results, write_results

    def write(name, seed, top1, protocol, analysis_protocol):
        settings = {"seed": seed} if protocol is None else {"seed": seed, "protocol": protocol}
        data = make_results(model_name="convnext_tiny", kernel_sizes=[7] * 4, num_params=1, model_config={},
                            weights={"raw": {"imagenet_a": {"top1": top1, "correct": int(top1), "n": 100}}},
                            settings=settings, errors=[])
        fgsm = {"points": [{"eps": 0.1, "accuracy": top1 / 2}]}
        if analysis_protocol is not None:
            fgsm["protocol"] = analysis_protocol
        data["analyses"] = {"fgsm": fgsm}
        (tmp_path / name).mkdir()
        write_results(tmp_path / name / "last.robustness.json", data)

    write("s0", 0, 10.0, None, None)
    write("s1", 1, 20.0, "model", "model")
    write("p0", 0, 40.0, "paper", "paper")
    out = build_report([tmp_path], tmp_path / "report")
    (row,) = out["rows"]
    model, paper = row.stats["imagenet_a/top1"], row.stats["imagenet_a@paper/top1"]
    assert (model.n, model.mean, paper.n, paper.mean) == (2, 15.0, 1, 40.0)
    assert column_label("imagenet_a@paper/top1") == "IN-A [paper] top-1"
    fgsm = {k: s for k, s in row.stats.items() if k.startswith("analysis/fgsm")}
    assert {k: (s.n, s.mean) for k, s in fgsm.items()} == {"analysis/fgsm.eps0.1": (2, 7.5),
                                                          "analysis/fgsm@paper.eps0.1": (1, 20.0)}
    names = {p.relative_to(tmp_path / "report").as_posix() for p in out["plots"]}
    assert {"analysis_fgsm.png", "protocol_paper/analysis_fgsm.png"} <= names
    assert "IN-A [paper] top-1" in (tmp_path / "report" / "report.md").read_text()


def test_callback_takes_the_protocol():
    from lk_ablate.base.errors import ConfigError
    from lk_ablate.robustness import RobustnessEvaluation
    from lk_ablate.robustness.callback import settings_for

    cb = RobustnessEvaluation(imagenet_a="/a", protocol="paper")
    benches = build_benchmarks(**cb.benchmark_kwargs())
    assert {p.protocol for b in benches for p in b.parts} == {"paper"}
    assert settings_for(benches)["protocol"] == "paper"
    assert settings_for(build_benchmarks(imagenet_a="/a"))["protocol"] == "model"
    with pytest.raises(ConfigError, match="protocol must be one of model, paper"):
        RobustnessEvaluation(imagenet_a="/a", protocol="hendrycks")
