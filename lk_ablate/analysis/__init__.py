"""The paper's robustness analyses as configurable evaluations (one module each; see docs/analyses.md).

``run_analyses(model, sections, val_data, model_config, results_path=..., out_dir=...)`` runs any of them; the
CLI (``lk_ablate analyze``) and the robustness callback both call it. Names are imported on first use: the
command line reads the torch-free catalogue (:mod:`.configs`) only.
"""
from ..base.lazy import lazy_exports

__all__ = ["ANALYSES", "CATALOGUE", "Analysis", "analysis_sections", "get_analysis", "load_preset", "parse_sections",
           "preset_names", "run_analyses"]
__getattr__, __dir__ = lazy_exports(__name__, {
    ".runner": ["ANALYSES", "Analysis", "analysis_sections", "get_analysis", "load_preset", "parse_sections",
                "run_analyses"],
    ".configs": ["CATALOGUE", "preset_names"]}, globals())
