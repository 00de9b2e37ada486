import os

# One thread per process keeps the 2-core CI machine from thrashing when tests start subprocesses.
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")

import torch  # noqa: E402

torch.set_num_threads(1)

# Lightning binds its log handler to the stderr that exists when it is first imported; importing it here,
# at collection time, keeps capsys-captured tests from leaving it a closed stream.
import lightning.pytorch  # noqa: E402,F401

# The `slurm_cluster` fixture (a real one-node SLURM for the session) for every test module.
pytest_plugins = ["slurm_cluster"]
