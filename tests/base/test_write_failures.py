"""The one writer when the environment refuses (issue 24): a full disk (a real ENOSPC: the temporary file is made a
link to /dev/full), a read-only file system (EROFS injected where the writer creates its files), a folder in the way;
each is one line naming the file and the fix, with nothing left behind; ``check_writable`` says so before long work;
the results lock never follows a planted symbolic link and leaves no lock file behind."""
from __future__ import annotations

import errno
import json
import os
import tempfile
from pathlib import Path

import pytest
import torch

import lk_ablate.base.files as files
from lk_ablate.base.errors import WriteError, environment_error_line
from lk_ablate.base.files import atomic_torch_save, atomic_write_text, check_writable, locked
from lk_ablate.base.results import make_results, read_results, update_results, write_results, write_results_or_keep

ENOSPC_FIX = "No space left on device (errno ENOSPC); free space on that file system or write to another one"


@pytest.fixture()
def full_disk(monkeypatch):
    """Every file the writer creates is a link to /dev/full: writing it fails with the kernel's ENOSPC."""
    real = tempfile.mkstemp

    def mkstemp(*args, **kwargs):
        fd, name = real(*args, **kwargs)
        os.close(fd)
        os.unlink(name)
        os.symlink("/dev/full", name)
        return os.open(name, os.O_WRONLY), name

    monkeypatch.setattr(files.tempfile, "mkstemp", mkstemp)


@pytest.fixture()
def read_only(monkeypatch):
    def mkstemp(*args, dir=None, **kwargs):
        raise OSError(errno.EROFS, "Read-only file system", dir)

    monkeypatch.setattr(files.tempfile, "mkstemp", mkstemp)


def _results(step: int = 10) -> dict:
    return make_results(model_name="convnext_demo", kernel_sizes=[3, 3, 3, 3], num_params=1, model_config={},
                        weights={"raw": {"imagenet_a": {"top1": 25.0, "correct": 50, "n": 200}}}, settings={},
                        errors=[], checkpoint_path="/runs/k3/last.ckpt", epoch=1, global_step=step)


def test_full_disk_is_one_line_and_keeps_the_old_file(tmp_path, full_disk):
    ckpt = tmp_path / "last.ckpt"
    ckpt.write_bytes(b"the previous checkpoint")
    # torch.save reports ENOSPC as "RuntimeError: [enforce fail at inline_container.cc:...]" with the OSError as its
    # context: the writer names the file and the fix instead.
    with pytest.raises(WriteError) as e:
        atomic_torch_save({"w": torch.zeros(1000)}, ckpt)
    assert str(e.value) == f"cannot write {ckpt}: {ENOSPC_FIX}" and e.value.errno == errno.ENOSPC
    with pytest.raises(WriteError, match="No space left on device"):
        atomic_write_text(tmp_path / "r.json", "{}")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.ckpt"]  # no temporary left, the old file intact
    assert ckpt.read_bytes() == b"the previous checkpoint"


def test_check_writable_names_the_problem_before_the_work(tmp_path, monkeypatch):
    hint = "choose another with --results_path FILE"
    with pytest.raises(WriteError) as e:
        check_writable(tmp_path, "results file", hint)
    assert str(e.value) == f"cannot write results file {tmp_path}: it is a folder; give a file path; {hint}"
    (tmp_path / "a_file").write_text("x")
    with pytest.raises(WriteError, match="a part of its folder path is a file, not a folder; fix the path"):
        check_writable(tmp_path / "a_file" / "r.json", "results file", hint)
    with pytest.raises(WriteError) as e:
        check_writable(tmp_path / "r.json", "results file", hint, need_bytes=1 << 60)
    assert str(e.value).startswith(f"not enough space for results file {tmp_path / 'r.json'}: it needs about "
                                   f"1048576.0 TiB and {tmp_path} has ")
    assert str(e.value).endswith(f" free; free space there or write to another file system; {hint}")
    assert check_writable(tmp_path / "new" / "r.json", "results file", hint) == tmp_path / "new" / "r.json"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a_file", "new"] and not list((tmp_path / "new").iterdir())
    link = tmp_path / "r.json.lock"
    link.symlink_to(tmp_path / "victim")
    with pytest.raises(WriteError) as e:
        check_writable(tmp_path / "r.json", "results file", hint, lock=True)
    assert str(e.value) == (f"cannot write results file {tmp_path / 'r.json'}: its lock file {link} is a symbolic "
                            "link, not one lk_ablate made; remove it (lk_ablate creates its lock files itself and "
                            "removes them after each update)")


def test_check_writable_on_a_read_only_file_system(tmp_path, read_only):
    with pytest.raises(WriteError) as e:
        check_writable(tmp_path / "r.json", "results file", "choose another with --results_path FILE")
    assert str(e.value) == (f"cannot write results file {tmp_path / 'r.json'}: Read-only file system in {tmp_path} "
                            "(errno EROFS); choose another with --results_path FILE")
    with pytest.raises(WriteError) as e:
        atomic_write_text(tmp_path / "r.json", "{}")
    assert str(e.value) == (f"cannot write {tmp_path / 'r.json'}: Read-only file system (errno EROFS); the file "
                            "system is read-only: choose a writable location")


def test_environment_errors_elsewhere_are_one_line():
    """What the CLI prints for an OSError no lk_ablate code named first (e.g. a logger creating its folder)."""
    e = OSError(errno.EROFS, "Read-only file system", "/runs/k3/lightning_logs")
    assert environment_error_line(e) == ("/runs/k3/lightning_logs: Read-only file system (errno EROFS); the file "
                                         "system is read-only: choose a writable location")
    try:
        try:
            raise OSError(errno.ENOSPC, "No space left on device")
        except OSError:
            raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 1694976 vs 1694864")
    except RuntimeError as wrapped:
        assert environment_error_line(wrapped) == f"cannot write a file: {ENOSPC_FIX}"
    from lightning.fabric.utilities.exceptions import MisconfigurationException

    lightning = MisconfigurationException("`Trainer(limit_val_batches=-1)` must be an int or a float in [0, 1]")
    assert environment_error_line(lightning) == "`Trainer(limit_val_batches=-1)` must be an int or a float in [0, 1]"
    assert environment_error_line(KeyError("pytorch-lightning_version")) is None  # a bug keeps its traceback


def test_results_lock_refuses_a_planted_link_and_leaves_no_lock_file(tmp_path):
    path = write_results(tmp_path / "m.robustness.json", _results())
    victim = tmp_path / "elsewhere" / "victim"
    victim.parent.mkdir()
    (tmp_path / "m.robustness.json.lock").symlink_to(victim)
    with pytest.raises(WriteError) as e:
        update_results(path, "analyses.x", {"v": 1.0})
    assert str(e.value) == (f"refusing to use the lock file {tmp_path / 'm.robustness.json.lock'}: it is a "
                            f"symbolic link (to {victim}), not a lock file of lk_ablate; remove it (lk_ablate creates "
                            "its lock files itself and removes them after each update)")
    assert not victim.exists(), "the link's target was not created"
    (tmp_path / "m.robustness.json.lock").unlink()
    update_results(path, "analyses.x", {"v": 1.0})
    assert read_results(path)["analyses"] == {"x": {"v": 1.0}}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["elsewhere", "m.robustness.json"]
    with locked(path):  # held: the lock file exists, and is an empty regular file of its own
        assert (tmp_path / "m.robustness.json.lock").stat().st_size == 0
    assert not (tmp_path / "m.robustness.json.lock").exists()


def test_rescoring_keeps_analyses_and_a_failed_write_keeps_the_scores(tmp_path, monkeypatch):
    path = write_results(tmp_path / "m.robustness.json", _results())
    update_results(path, "analyses.lesion", {"acc": [1.0]})
    again = _results()
    again["weights"]["raw"]["imagenet_a"].update(top1=30.0, correct=60)
    write_results_or_keep(path, again)  # the same checkpoint state re-scored: its analyses stay
    data = read_results(path)
    assert data["weights"]["raw"]["imagenet_a"]["top1"] == 30.0 and data["analyses"] == {"lesion": {"acc": [1.0]}}
    write_results_or_keep(path, _results(step=20))  # another state: its own file contents, no foreign analyses
    assert read_results(path)["analyses"] == {}
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))
    (tmp_path / "tmp").mkdir()

    def full(*args, **kwargs):
        raise WriteError(f"cannot write {path}: {ENOSPC_FIX}")

    monkeypatch.setattr("lk_ablate.base.results.write_results", full)
    with pytest.raises(WriteError) as e:
        write_results_or_keep(path, again)
    (kept,) = (tmp_path / "tmp").iterdir()
    assert str(e.value) == (f"cannot write {path}: {ENOSPC_FIX}; the results were kept in {kept}: move that file to "
                            f"{path} once it can be written")
    assert json.loads(kept.read_text()) == json.loads(json.dumps(again))
    assert not (tmp_path / "m.robustness.json.lock").exists()


def test_append_never_follows_a_planted_link(tmp_path):
    log = tmp_path / ".train.beton.failed-123"
    log.symlink_to(tmp_path / "victim")
    with pytest.raises(WriteError, match="a symbolic link is in the way"):
        files.append_text(log, "x\n")
    assert not (tmp_path / "victim").exists()
    log.unlink()
    files.append_text(log, "a\n")
    files.append_text(log, "b\n")
    assert Path(log).read_text() == "a\nb\n"
