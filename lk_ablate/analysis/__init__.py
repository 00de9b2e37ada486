"""The paper's robustness analyses as configurable evaluations (one module each; see docs/analyses.md).

``run_analyses(model, sections, val_data, model_config, results_path=..., out_dir=...)`` runs any of them; the
CLI (``lk_ablate analyze``) and the robustness callback both call it.
"""
from .runner import (ANALYSES, Analysis, analysis_sections, get_analysis, load_preset, parse_sections, preset_names,
                     run_analyses)

__all__ = ["ANALYSES", "Analysis", "analysis_sections", "get_analysis", "load_preset", "parse_sections",
           "preset_names", "run_analyses"]
