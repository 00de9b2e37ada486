# The two commands of the README. Both set everything up first (idempotent).
.PHONY: setup demo test
setup:
	@bash scripts/setup.sh

demo: setup
	.venv/bin/lk_ablate demo

test: setup
	.venv/bin/python -m pytest tests

# Mutation check (a developer tool, not part of `make test`): every listed one-line bug must be caught.
.PHONY: mutants
mutants: setup
	.venv/bin/python scripts/mutants.py
