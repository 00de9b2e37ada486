# The two commands of the README. Both set everything up first (idempotent).
.PHONY: setup demo test fast cov
setup:
	@bash scripts/setup.sh

demo: setup
	.venv/bin/lk_ablate demo

# Two pytest-xdist workers (the tests run one torch thread each); --dist loadfile keeps a test file on one
# worker, so that its module fixtures (trained runs, the SLURM cluster's jobs) are built once.
PYTEST_WORKERS = -n 2 --dist loadfile

test: setup
	.venv/bin/python -m pytest tests $(PYTEST_WORKERS)

# The fast tier (docs/testing.md): everything not marked slow, under 90 s on 2 idle cores.
fast: setup
	.venv/bin/python -m pytest tests -m "not slow" $(PYTEST_WORKERS)

# The fast tier with the per-module line coverage of lk_ablate/ (the table in the README's test section).
cov: setup
	.venv/bin/python -m pytest tests -m "not slow" --cov=lk_ablate --cov-report=term

# Mutation check (a developer tool, not part of `make test`): every listed one-line bug must be caught.
.PHONY: mutants
mutants: setup
	.venv/bin/python scripts/mutants.py
