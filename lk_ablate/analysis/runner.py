"""The registry of analyses and ``run_analyses``, the one entry point of the CLI and the robustness callback."""
from __future__ import annotations

import contextlib
import dataclasses
import sys
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import torch.nn as nn

from ..base.files import atomic_path
from ..base.jsonable import to_jsonable
from ..base.progress import Progress
from ..data.transforms import EvalSpec
from ..base.errors import ConfigError, one_line
from ..evaluation.options import check_protocol
from ..models.registry import ModelConfig
from . import attacks, features, frequency, imagenet9, imagenet_p, kernel_distance, lesion, occlusion
from .common import write_analysis_result
from .configs import CATALOGUE, PRESETS_PACKAGE, SectionConfig, add_section_arguments, preset_names


@dataclasses.dataclass(frozen=True)
class Analysis:
    """One analysis: its config section class, ``run(model, cfg, data, model_config) -> dict``, a plot and the
    scalar summary the ablation report tabulates. ``needs_val``: it reads labelled validation batches."""

    name: str
    config: type[SectionConfig]
    run: Callable[..., dict[str, Any]]
    plot: Callable[[dict[str, Any], Any], Any]
    summary: Callable[[dict[str, Any]], dict[str, float]]
    needs_val: bool
    help: str


def _analysis(name: str, run: Callable[..., dict[str, Any]], plot: Callable[[dict[str, Any], Any], Any],
              summary: Callable[[dict[str, Any]], dict[str, float]]) -> Analysis:
    e = CATALOGUE[name]
    return Analysis(name, e.config, run, plot, summary, e.needs_val, e.help)


# The catalogue (configs.py, torch-free: the command line's view) with each analysis's functions.
ANALYSES: dict[str, Analysis] = {a.name: a for a in (
    _analysis("imagenet_p", imagenet_p.run, imagenet_p.plot, imagenet_p.summary),
    _analysis("imagenet9", imagenet9.run, imagenet9.plot, imagenet9.summary),
    _analysis("occlusion", occlusion.run, occlusion.plot, occlusion.summary),
    _analysis("fgsm", attacks.run_fgsm, attacks.plot_fgsm, attacks.summary_fgsm),
    _analysis("pgd", attacks.run_pgd, attacks.plot_pgd, attacks.summary_pgd),
    _analysis("taig", attacks.run_taig, attacks.plot_taig, attacks.summary_taig),
    _analysis("lesion", lesion.run, lesion.plot, lesion.summary),
    _analysis("frequency", frequency.run, frequency.plot, frequency.summary),
    _analysis("kernel_distance", kernel_distance.run, kernel_distance.plot, kernel_distance.summary),
    _analysis("feature_variance", features.run, features.plot, features.summary),
)}
assert list(ANALYSES) == list(CATALOGUE), "every catalogued analysis has its functions here"


def analysis_sections(config: Mapping[str, Any] | None) -> dict[str, Any]:
    """The analysis sections of a config: under its ``analyses`` key if it has one, else its top level."""
    config = dict(config or {})
    if "analyses" in config:
        config = dict(config["analyses"] or {})
    return {k: v for k, v in config.items() if k in ANALYSES}


def eval_spec_for(name: str, cfg: ModelConfig, protocol: str = "model") -> EvalSpec:
    """The val transform analysis ``name`` reads under ``protocol``: the model's own (``model``), or the released
    script's (``paper``: the analysis module's ``paper_eval_spec(cfg)``; the model's own where it has none)."""
    check_protocol(protocol)
    if protocol == "paper":
        module = sys.modules[get_analysis(name).run.__module__]
        paper = getattr(module, "paper_eval_spec", None)
        if paper is not None:
            return paper(cfg)
    return EvalSpec.from_model_config(cfg)


def input_config(cfg: ModelConfig, spec: EvalSpec) -> ModelConfig:
    """``cfg`` with the mean/std, input size and interpolation of ``spec``: what an analysis that un-normalises or
    re-normalises pixels must use for the tensors ``spec`` produced."""
    return dataclasses.replace(cfg, mean=spec.mean, std=spec.std, input_size=(cfg.input_size[0], *spec.crop),
                               interpolation=spec.interpolation)


def load_preset(name: str) -> dict[str, Any]:
    """A shipped preset as the mapping its YAML file holds (``protocol`` and analysis sections)."""
    from importlib import resources

    import yaml

    path = resources.files(PRESETS_PACKAGE).joinpath(f"{name}.yaml")
    if not path.is_file():
        raise ConfigError(f"unknown preset {name!r}; shipped presets: {', '.join(preset_names())}")
    return dict(yaml.safe_load(path.read_text()) or {})


_SECTIONS_PARSER: list[Any] = []


def _sections_parser() -> Any:
    """The analyses' groups on a parser of their own (built once): what ``parse_sections`` checks mappings with."""
    if not _SECTIONS_PARSER:
        from jsonargparse import ArgumentParser

        parser = ArgumentParser(exit_on_error=False, default_meta=False)
        add_section_arguments(parser)
        _SECTIONS_PARSER.append(parser)
    return _SECTIONS_PARSER[0]


def parse_sections(sections: Mapping[str, Any]) -> dict[str, SectionConfig]:
    """Config dataclasses from mappings ({analysis name: {key: value}}), type-checked by the same jsonargparse
    groups as ``lk_ablate analyze`` (unknown keys and wrong types: one-line ConfigError), then validated."""
    import argparse

    values = {}
    for n, section in sections.items():
        get_analysis(n)
        values[n] = dict(section or {})
        keys = {f.name for f in dataclasses.fields(ANALYSES[n].config)}
        unknown = sorted(set(values[n]) - keys)
        if unknown:
            raise ConfigError(f"unknown key(s) {unknown} in config section {n!r}; valid keys: {sorted(keys)}")
    try:
        ns = _sections_parser().parse_object(values)
    except argparse.ArgumentError as e:
        raise ConfigError(f"analysis config: {one_line(e)}") from e
    return {n: section_from_parsed(n, getattr(ns, n)) for n in values}


def section_from_parsed(name: str, values: Any) -> SectionConfig:
    """The config dataclass of analysis ``name`` from its parsed group (a jsonargparse Namespace or a mapping);
    constructing it validates it."""
    items = vars(values) if not isinstance(values, Mapping) else values
    return get_analysis(name).config(**dict(items))


def section_config(name: str, section: Any) -> SectionConfig:
    """A section: a config dataclass instance as is, a mapping (or None: the defaults) parsed by jsonargparse."""
    cls = get_analysis(name).config
    return section if isinstance(section, cls) else parse_sections({name: section})[name]


def get_analysis(name: str) -> Analysis:
    if name not in ANALYSES:
        raise ConfigError(f"unknown analysis {name!r}; choose from: {', '.join(ANALYSES)}")
    return ANALYSES[name]


def run_analyses(model: nn.Module, config_sections: Mapping[str, Any], val_data: Any = None,
                 model_config: ModelConfig | None = None, results_path: str | Path | None = None,
                 out_dir: str | Path | None = None, names: Iterable[str] | None = None, label: str | None = None,
                 plot_prefix: str = "", results_init: Mapping[str, Any] | None = None,
                 protocol: str = "model", progress: bool = False) -> dict[str, dict[str, Any]]:
    """Run the analyses named in ``config_sections`` (section name -> options or a config dataclass;
    ``names`` restricts them).

    ``val_data``: for the analyses that need it, normalised (images, labels) batches of the validation set
    (re-iterable: a DataLoader or a list), or a source with ``loader(spec)`` (``loading.ValSource``) from which
    each analysis gets the batches of its own transform under ``protocol`` (:func:`eval_spec_for`); the
    analysis then receives a model config with that transform's mean/std/size (:func:`input_config`). Each
    result records its ``protocol``. Each result is stored in the results JSON ``results_path`` (schema of
    ``lk_ablate.base.results``, under "analyses" -> name; a missing file is created from ``results_init``,
    the keyword arguments of ``make_results``) and plotted to ``out_dir/<plot_prefix><name>.png`` when those are
    given. The model is put in eval mode and restored to its previous mode afterwards. ``progress``: each analysis
    reports the images it has put through the model (over all its passes; base/progress.py). Returns {name: result}.
    """
    sections = dict(config_sections or {})
    selected = list(names) if names is not None else [n for n in sections if n in ANALYSES]
    for n in list(sections) + selected:
        get_analysis(n)
    cfg_model = model_config or getattr(model, "model_config", None)
    if cfg_model is None:
        raise ConfigError("run_analyses needs the model's ModelConfig (mean/std/input size): pass model_config")
    check_protocol(protocol)
    parsed = {n: section_config(n, sections.get(n)) for n in selected}  # all errors before any work
    missing_val = [n for n in selected if ANALYSES[n].needs_val and val_data is None]
    if missing_val:
        raise ConfigError(f"analyses {missing_val} need validation images: give --data.imagenet_val DIR (the val "
                          "folder)")
    if protocol == "paper" and val_data is not None and not hasattr(val_data, "loader") \
            and any(ANALYSES[n].needs_val for n in selected):
        raise ConfigError("protocol paper reads each analysis's own transform: pass val_data as a source with "
                          "loader(spec) (lk_ablate.analysis.loading.ValSource), not ready-made batches")
    was_training = model.training
    model.eval()
    results: dict[str, dict[str, Any]] = {}
    try:
        for n in selected:
            spec = ANALYSES[n]
            data, mc = val_data, cfg_model
            if protocol == "paper" or hasattr(val_data, "loader"):
                es = eval_spec_for(n, cfg_model, protocol)
                mc = input_config(cfg_model, es) if protocol == "paper" else cfg_model
                if hasattr(val_data, "loader") and spec.needs_val:
                    data = val_data.loader(es)
            with Progress(f"analyze {n}", None, "img", progress).active():
                result = spec.run(model, parsed[n], data, mc)
            result["protocol"] = protocol
            if label is not None:
                result["model"] = label
            result["summary_scalars"] = spec.summary(result)
            with contextlib.ExitStack() as publish_plot:
                if out_dir is not None:
                    # Drawn to a temporary file and published only once the results file holds this result: a
                    # failed results update leaves no plot of numbers that were not stored (nor replaces an old one).
                    plot = Path(out_dir) / f"{plot_prefix}{n}.png"
                    spec.plot(result, Path(publish_plot.enter_context(atomic_path(plot, suffix=".png"))))
                    result["plot"] = str(plot)
                result = to_jsonable(result, nonfinite_to_none=True)
                if results_path is not None:
                    write_analysis_result(results_path, n, result, results_init)
            results[n] = result
    finally:
        model.train(was_training)
    return results
