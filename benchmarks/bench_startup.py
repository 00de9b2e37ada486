"""Start-up time of the command line: help, version, an unknown command and every own command's ``--help``, each in
a fresh process, against ``python -c "import torch"`` measured in the same run (what every one of them would pay if
it imported torch). Also says, per command, whether torch ended up in ``sys.modules`` (it must not).

Each command runs ``--repeats`` times, interleaved (command A, B, ..., then again), and the median wall time is
reported, so drift of a shared machine hits all alike; the load average before and after is printed.

    python benchmarks/bench_startup.py                 # 5 repeats
    python benchmarks/bench_startup.py --repeats 9
"""
from __future__ import annotations

import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

from jsonargparse import ActionConfigFile, ArgumentParser

REPO = Path(__file__).resolve().parents[1]
# Runs `lk_ablate ARGS` in-process in a fresh interpreter and prints whether torch was imported.
PROBE = ("import sys\nfrom lk_ablate.cli import main\n"
         "try:\n    main(sys.argv[1:])\nexcept SystemExit:\n    pass\n"
         "print('TORCH_IMPORTED' if 'torch' in sys.modules else 'NO_TORCH', file=sys.stderr)\n")
COMMANDS = [["--help"], ["--version"], ["bogus"], ["demo", "--help"], ["reparam", "--help"],
            ["robustness", "--help"], ["analyze", "--help"], ["analyze", "fgsm", "--help"], ["data", "--help"],
            ["data", "write-ffcv", "--help"], ["report", "--help"]]


def parser() -> ArgumentParser:
    p = ArgumentParser(prog="benchmarks/bench_startup.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--config", action=ActionConfigFile, help="YAML file(s) of these options")
    p.add_argument("--repeats", type=int, default=5, help="runs of each command (interleaved; the median counts)")
    return p


def _run(code: str, args: list[str]) -> tuple[float, str]:
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    t = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, env=env, cwd=REPO)
    dt = time.perf_counter() - t
    return dt, done.stderr.strip().splitlines()[-1] if done.stderr.strip() else ""


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    load0 = os.getloadavg()
    times: dict[str, list[float]] = {" ".join(c): [] for c in COMMANDS}
    torch_times: list[float] = []
    imported: dict[str, str] = {}
    for _ in range(args.repeats):
        torch_times.append(_run("import torch", [])[0])
        for cmd in COMMANDS:
            dt, last = _run(PROBE, cmd)
            times[" ".join(cmd)].append(dt)
            imported[" ".join(cmd)] = last
    load1 = os.getloadavg()
    torch_s = statistics.median(torch_times)
    print(f"{os.cpu_count()} cores, load average {load0[0]:.2f} before, {load1[0]:.2f} after; median of "
          f"{args.repeats} interleaved runs, each in a fresh `{Path(sys.executable).name}`")
    print("| command | median s | torch imported | ratio to `import torch` |\n|---|---|---|---|")
    print(f"| python -c \"import torch\" | {torch_s:.2f} | yes | 1.00 |")
    for cmd, ts in times.items():
        med = statistics.median(ts)
        print(f"| lk_ablate {cmd} | {med:.2f} | {'yes' if imported[cmd] == 'TORCH_IMPORTED' else 'no'} | "
              f"{med / torch_s:.2f} |")
    worst = max(statistics.median(ts) for ts in times.values())
    print(f"slowest: {worst:.2f} s; target < 1 s: {'PASS' if worst < 1.0 else 'FAIL'}; "
          f"none imports torch: {'PASS' if all(v == 'NO_TORCH' for v in imported.values()) else 'FAIL'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
