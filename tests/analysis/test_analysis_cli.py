"""``lk_ablate analyze`` end to end on a saved lk_ablate checkpoint and a generated val folder; the cross-run report."""
import re

import pytest
import torch
import yaml
from PIL import Image

import lk_ablate
from lk_ablate.analysis.runner import section_config
from lk_ablate.analysis.common import write_analysis_result
from lk_ablate.analysis.loading import load_model
from lk_ablate.analysis.summary import load_analyses, plot_across_runs, summary_rows
from lk_ablate.cli import main
from lk_ablate.base.errors import DataError
from lk_ablate.base.results import make_results, read_results, write_results


def _checkpoint(path, kernel_size, seed):
    torch.manual_seed(seed)
    raw = lk_ablate.create_model("convnext_demo", kernel_size=kernel_size)
    ema = lk_ablate.create_model("convnext_demo", kernel_size=kernel_size)
    sd = {**{f"model.{k}": v for k, v in raw.state_dict().items()},
          **{f"ema.module.{k}": v for k, v in ema.state_dict().items()}}
    torch.save({"state_dict": sd, "hyper_parameters": {"model_name": "convnext_demo", "kernel_size": kernel_size,
                                                       "num_classes": 10, "model_kwargs": {}}}, path)
    return raw, ema


def _val_folder(root):
    g = torch.Generator().manual_seed(0)
    for c in range(10):
        d = root / f"class{c}"
        d.mkdir(parents=True)
        for i in range(2):
            arr = (torch.rand(32, 32, 3, generator=g) * 255).byte().numpy()
            Image.fromarray(arr).save(d / f"{i}.png")


def test_load_model_prefers_ema_and_reads_hyper_parameters(tmp_path):
    raw, ema = _checkpoint(tmp_path / "run.ckpt", 5, 0)
    lm = load_model(tmp_path / "run.ckpt")
    assert lm.label == "convnext_demo k5" and lm.meta["ema"] is True and lm.model.kernel_sizes == (5, 5, 5, 5)
    for k, v in ema.state_dict().items():
        assert torch.equal(lm.model.state_dict()[k], v)
    no_ema = load_model(tmp_path / "run.ckpt", ema=False)
    for k, v in raw.state_dict().items():
        assert torch.equal(no_ema.model.state_dict()[k], v)
    with pytest.raises(DataError, match="not found"):
        load_model(tmp_path / "missing.ckpt")


def test_analyze_cli_all_sections_then_report(tmp_path):
    _val_folder(tmp_path / "val")
    cfg = {"data": {"imagenet_val": str(tmp_path / "val"), "batch_size": 8, "num_workers": 0},
           "kernel_distance": {"modules": "auto"}, "fgsm": {"eps": [0.01, 0.1]}, "lesion": {"ns": [0, 2], "samples": 2},
           "feature_variance": {"max_images": 8}}
    (tmp_path / "an.yaml").write_text(yaml.safe_dump(cfg))
    # k3 was scored by `lk_ablate robustness` before: its results must survive
    scored = make_results(model_name="convnext_demo", kernel_sizes=[3] * 4, num_params=1, model_config={},
                          weights={"ema": {"imagenet_a": {"top1": 12.5, "correct": 1, "n": 8}}}, settings={},
                          errors=[])
    write_results(tmp_path / "k3.robustness.json", scored)
    runs = []
    for k in (3, 7):
        ckpt = tmp_path / f"k{k}.ckpt"
        _checkpoint(ckpt, k, k)
        rc = main(["analyze", "all", "--ckpt_path", str(ckpt), "--config", str(tmp_path / "an.yaml"),
                   "--data.subset_size", "12", "--fgsm.eps", "[0.02]"])
        assert rc == 0
        results = tmp_path / f"k{k}.robustness.json"
        analyses = load_analyses(results)
        assert set(analyses) == {"kernel_distance", "fgsm", "lesion", "feature_variance"}
        assert analyses["fgsm"]["images"] == 12 and [p["eps"] for p in analyses["fgsm"]["points"]] == [0.02]
        assert analyses["fgsm"]["model"] == f"convnext_demo k{k}"
        for name in analyses:
            assert (tmp_path / f"k{k}.robustness.{name}.png").is_file()
        runs.append((f"k{k}", analyses))
    # a second call merges into the same file instead of replacing it
    assert main(["analyze", "pgd", "--ckpt_path", str(tmp_path / "k3.ckpt"), "--data.imagenet_val", str(tmp_path / "val"),
                 "--data.subset_size", "4", "--pgd.eps", "[0.01]", "--data.num_workers", "0"]) == 0
    assert set(load_analyses(tmp_path / "k3.robustness.json")) >= {"pgd", "fgsm"}
    rows = summary_rows(runs)
    assert [r["run"] for r in rows] == ["k3", "k7"] and "fgsm.eps0.02" in rows[0]
    written = plot_across_runs(runs, tmp_path / "report")
    assert sorted(p.name for p in written) == sorted(f"analysis_{n}.png" for n in runs[0][1])
    data = read_results(tmp_path / "k7.robustness.json")  # created by analyze, valid schema
    assert data["analyses"]["kernel_distance"]["layers"][0]["kernel_size"] == [7, 7]
    assert data["model"]["kernel_sizes"] == [7] * 4 and data["checkpoint"]["format"] == "lightning"
    assert read_results(tmp_path / "k3.robustness.json")["weights"]["ema"]["imagenet_a"]["top1"] == 12.5


def test_results_entry_is_replaced_not_merged(tmp_path):
    init = {"model_name": "m", "kernel_sizes": None, "num_params": 1, "model_config": {}}
    write_analysis_result(tmp_path / "r.json", "occlusion", {"curves": {"random": [1], "salient": [2]}}, init)
    write_analysis_result(tmp_path / "r.json", "occlusion", {"curves": {"random": [3]}})
    assert read_results(tmp_path / "r.json")["analyses"] == {"occlusion": {"curves": {"random": [3]}}}
    with pytest.raises(DataError, match="not found"):
        write_analysis_result(tmp_path / "other.json", "fgsm", {})


def test_analyze_timm_model_and_paper_config(tmp_path, capsys):
    import timm

    _val_folder(tmp_path / "val")
    torch.manual_seed(0)
    torch.save(timm.create_model("test_convnext", num_classes=10).state_dict(), tmp_path / "tc.pth")
    assert main(["analyze", "fgsm", "--model.timm", "test_convnext", "--ckpt_path", str(tmp_path / "tc.pth"),
                 "--model.num_classes", "10", "--data.imagenet_val", str(tmp_path / "val"), "--data.subset_size", "4", "--data.num_workers", "0",
                 "--fgsm.eps", "[0.05]"]) == 0
    res = read_results(tmp_path / "tc.robustness.json")
    assert res["model"]["source"] == "timm" and res["model"]["config"]["input_size"] == [3, 160, 160]
    assert res["analyses"]["fgsm"]["images"] == 4
    # progress by default: in a log (no tty) the closing line counts the images through the model
    assert re.search(r"^analyze fgsm: done 4 img, ", capsys.readouterr().err, re.M)
    # the shipped paper settings: kernel distance needs no data
    out = tmp_path / "demo.json"
    assert main(["analyze", "kernel_distance", "--model.model_name", "convnext_demo", "--preset", "paper",
                 "--results_path", str(out)]) == 0
    assert read_results(out)["analyses"]["kernel_distance"]["config"]["normalize_weights"] is False


@pytest.mark.parametrize("argv,msg", [
    (["analyze", "nope", "--model.model_name", "convnext_demo"], "invalid choice: 'nope'"),
    (["analyze", "fgsm", "--model.model_name", "convnext_demo"], "need validation images"),
    (["analyze", "kernel_distance"], "say which model"),
    (["analyze", "kernel_distance", "--model.model_name", "convnext_demo", "--kernel_distance.modules", "all"], "modules"),
    (["analyze", "occlusion", "--model.model_name", "convnext_demo", "--preset", "paper", "--data.imagenet_val", "x"], "dino_path"),
])
def test_analyze_cli_errors_are_one_message(argv, msg, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert msg in err and "Traceback" not in err


def test_analyze_help_lists_the_analyses_and_name_help_shows_its_own_options(capsys):
    """`analyze --help`: every analysis with its one line; `analyze NAME --help`: that analysis's group only."""
    from lk_ablate.analysis.configs import CATALOGUE

    with pytest.raises(SystemExit):
        main(["analyze", "--help"])
    out = capsys.readouterr().out
    for name, entry in CATALOGUE.items():
        assert name in out and entry.help.split()[0] in out
    with pytest.raises(SystemExit):
        main(["analyze", "fgsm", "--help"])
    out = capsys.readouterr().out
    assert "--fgsm.eps" in out and "--ckpt_path" in out and "--data.imagenet_val" in out
    assert not [n for n in CATALOGUE if n != "fgsm" and f"--{n}." in out]


def _synthetic(k):
    pts = [{"eps": e, "steps": s, "alpha": e / 4, "accuracy": 50 - 100 * e * s / k} for e in (0.002, 0.006)
           for s in (1, 5)]
    layers = [{"name": f"l{i}", "index": i, "depth": i / 2, "mean": 0.1 * i * k, "variance": 1.0 + i} for i in range(3)]
    return {
        "imagenet_p": {"perturbations": {"tilt": {"flip_probability": 0.1, "top5_distance": 1.0}}},
        "imagenet9": {"accuracy": {"original": 90.0, "mixed_same": 80.0, "mixed_rand": 70.0 + k}, "bg_gap": 10.0 - k},
        "occlusion": {"curves": {"random": [{"level": 0.5, "accuracy": 40.0 + k}],
                                 "salient": [{"level": 0.5, "accuracy": 30.0}]}},
        "fgsm": {"points": [{"eps": 0.1, "accuracy": 10.0 + k}]},
        "pgd": {"points": pts},
        "taig": {"points": [{"eps": 0.03, "success_rate": 60.0 - k, "surrogate_success_rate": 99.0}]},
        "lesion": {"points": [{"n": 0, "fraction": 0.0, "mean": 80.0}, {"n": 1, "fraction": 0.125, "mean": 70.0 + k}]},
        "frequency": {"bands": [{"low": 0.0, "high": 0.5, "center": 0.25, "drop": 1.0 + k}]},
        "kernel_distance": {"summary": {"mean_distance": 0.3}, "layers": layers},
        "feature_variance": {"summary": {"mean_variance": 2.0}, "layers": layers},
    }


def test_report_tables_and_plots_every_analysis(tmp_path):
    runs = [("k3", _synthetic(3)), ("k31", _synthetic(31))]
    rows = summary_rows(runs)
    assert rows[1]["imagenet9.bg_gap"] == -21.0 and rows[0]["imagenet_p.mean_FP"] == 0.1
    assert rows[0]["pgd.eps0.006.steps5"] == pytest.approx(50 - 100 * 0.006 * 5 / 3)
    assert rows[1]["lesion.n1.mean"] == 101.0 and rows[0]["occlusion.salient.mean"] == 30.0
    written = plot_across_runs(runs, tmp_path)
    assert len(written) == 10 and all(p.stat().st_size > 0 for p in written)


def test_sections_are_parsed_by_jsonargparse(capsys):
    """The Python API (dict sections) and the CLI (option groups) type-check sections with the same groups."""
    from lk_ablate.base.errors import ConfigError

    with pytest.raises(ConfigError, match="occlusion.patch_size"):
        section_config("occlusion", {"patch_size": "big"})
    assert section_config("occlusion", {"levels": [0.1, 0.5], "modes": ["random"]}).levels == (0.1, 0.5)
    assert main(["analyze", "occlusion", "--model.model_name", "convnext_demo", "--occlusion.patch_size", "big"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "occlusion.patch_size" in err[0]


def test_dotted_override_print_config_round_trip(tmp_path, capsys):
    """--preset, a dotted override, --print_config; the printed file read back prints the same and parses to the
    same config dataclasses."""
    from lk_ablate.commands.analyze import parse_args, sections_of

    argv = ["all", "--preset", "paper", "--model.model_name", "convnext_demo", "--occlusion.levels", "[0.1,0.5]",
            "--lesion.samples", "3"]
    with pytest.raises(SystemExit):
        main(["analyze", *argv, "--print_config"])
    printed = capsys.readouterr().out
    cfg = yaml.safe_load(printed)
    assert cfg["occlusion"]["levels"] == [0.1, 0.5] and cfg["lesion"]["samples"] == 3
    assert cfg["pgd"]["steps"] == list(range(1, 11)) and cfg["protocol"] == "paper"
    (tmp_path / "c.yaml").write_text(printed)
    with pytest.raises(SystemExit):
        main(["analyze", "all", "--config", str(tmp_path / "c.yaml"), "--print_config"])
    assert capsys.readouterr().out == printed
    names = ["occlusion", "lesion", "pgd"]
    direct = sections_of(parse_args(argv + ["--occlusion.dino_path", "/d"])[1], names)
    again = sections_of(parse_args(["all", "--config", str(tmp_path / "c.yaml"), "--occlusion.dino_path",
                                    "/d"])[1], names)
    assert direct == again and direct["occlusion"].levels == (0.1, 0.5)
