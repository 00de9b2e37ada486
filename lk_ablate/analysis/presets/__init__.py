"""Shipped presets of ``lk_ablate analyze``: one YAML file per name, chosen with ``--preset NAME`` (stackable)."""
