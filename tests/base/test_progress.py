"""Progress of long jobs (base/progress.py): a bar on a terminal, a line every N seconds elsewhere (SLURM logs), nothing
with --progress false; the jobs report to it by default (robustness scoring, analyses, corruption generation)."""
from __future__ import annotations

import io
import re

from lk_ablate.base.progress import Progress, advance, progress_iter


class _Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_a_log_gets_lines_not_redraws():
    log = io.StringIO()
    list(progress_iter(range(5), "score imagenet_a", unit="batches", stream=log, every=0.0))
    lines = log.getvalue().splitlines()
    # every=0: a line per update, then the closing line; no carriage return anywhere
    assert len(lines) == 6 and "\r" not in log.getvalue()
    assert re.fullmatch(r"score imagenet_a: progress 3/5 batches \(60\.0%\), [\d.,]+ batches/s, elapsed 0:00:00"
                        r"(, eta 0:00:\d\d)?", lines[2]), lines[2]
    assert lines[-1].startswith("score imagenet_a: done 5/5 batches (100.0%)")


def test_lines_wait_for_the_interval_and_off_is_silent():
    log = io.StringIO()
    with Progress("write train.beton", 1000, "img", stream=log, every=3600.0) as p:
        for _ in range(10):
            p.update(100)
    assert log.getvalue().splitlines() == [log.getvalue().splitlines()[0]]  # only the closing line
    assert log.getvalue().startswith("write train.beton: done 1,000/1,000 img (100.0%)")
    quiet = io.StringIO()
    list(progress_iter(range(3), "x", enabled=False, stream=quiet, every=0.0))
    assert quiet.getvalue() == ""


def test_a_terminal_gets_a_bar():
    tty = _Tty()
    list(progress_iter(range(4), "analyze fgsm", stream=tty))
    out = tty.getvalue()  # tqdm draws at most every 0.1 s: the first frame, then it clears the line (leave=False)
    assert out.startswith("\ranalyze fgsm:   0%|") and "0/4" in out and "done" not in out


def test_code_deep_in_a_job_reports_to_the_active_one():
    log = io.StringIO()
    advance(7)  # no job active: nothing happens
    with Progress("analyze lesion", None, "img", stream=log, every=3600.0).active():
        advance(30)
        advance(12)
    assert log.getvalue().startswith("analyze lesion: done 42 img, ")
