import os

# One thread per process keeps the 2-core CI machine from thrashing when tests start subprocesses.
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")

import sys  # noqa: E402

from helpers import TEST_DIRS  # noqa: E402

sys.path[:0] = [str(d) for d in TEST_DIRS if str(d) not in sys.path]

import torch  # noqa: E402

torch.set_num_threads(1)

# Lightning binds its log handler to the stderr that exists when it is first imported; importing it here,
# at collection time, keeps capsys-captured tests from leaving it a closed stream.
import lightning.pytorch  # noqa: E402,F401

# The `slurm_cluster` fixture (a real one-node SLURM for the session) for every test module, and the rule that
# nothing skips (no_skips.py: a skip is reported as a failure).
pytest_plugins = ["slurm_cluster", "no_skips"]


def pytest_collection_modifyitems(config, items):
    """The one deselection of the suite: `gpu` tests run only where CUDA is present (a CPU machine cannot run them;
    every other test runs everywhere, and a missing component fails its test instead of skipping it)."""
    if torch.cuda.is_available():
        return
    gpu = [item for item in items if item.get_closest_marker("gpu")]
    if gpu:
        config.hook.pytest_deselected(items=gpu)
        items[:] = [item for item in items if not item.get_closest_marker("gpu")]
        config._lk_deselected = gpu  # the counts of pytest_collection_finish include them


def pytest_collection_finish(session):
    """With LK_ABLATE_COUNTS_FILE set (scripts/doc_counts.py), write the counts the docs quote: every test, the
    `gpu` ones, the `slow` ones and the fast tier on a CPU machine (neither), as collected before any deselection."""
    path = os.environ.get("LK_ABLATE_COUNTS_FILE")
    if not path:
        return
    import json

    items = list(session.items) + list(getattr(session.config, "_lk_deselected", []))
    gpu = sum(1 for i in items if i.get_closest_marker("gpu"))
    slow = sum(1 for i in items if i.get_closest_marker("slow"))
    fast = sum(1 for i in items if not i.get_closest_marker("gpu") and not i.get_closest_marker("slow"))
    with open(path, "w") as f:
        json.dump({"total": len(items), "gpu": gpu, "slow": slow, "fast": fast}, f)
