"""The command layer: each `lk_ablate` subcommand's entry point (parsing, files, printing) above the library layers."""
