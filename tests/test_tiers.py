"""The test tiers themselves (docs/testing.md): collecting the suite imports neither numba nor FFCV, `gpu` tests are
the one deselection (where CUDA is absent), and a skip is reported as a failure."""
import json
import subprocess
import sys

import pytest
import torch

from cluster_helpers import REPO, cli_env

# pytest.main in a fresh process with -m "not ffcv" --collect-only; a plugin object records what collection
# imported, which items were selected and which deselected (with their markers).
COLLECT = """
import json, sys
import pytest

class Probe:
    deselected = []
    def pytest_deselected(self, items):
        self.deselected += [(i.nodeid, sorted(m.name for m in i.iter_markers())) for i in items]
    def pytest_collection_finish(self, session):
        self.imported = sorted({m.split(".")[0] for m in sys.modules} & {"numba", "ffcv"})
        self.selected = [(i.nodeid, sorted(m.name for m in i.iter_markers())) for i in session.items]

probe = Probe()
rc = pytest.main(["tests", "-m", "not ffcv", "--collect-only", "-q", "-p", "no:cacheprovider"], plugins=[probe])
print("PROBE " + json.dumps({"rc": int(rc), "imported": probe.imported, "selected": probe.selected,
                             "deselected": probe.deselected}))
"""


@pytest.mark.slow
def test_collection_imports_neither_numba_nor_ffcv_and_deselects_only_gpu_and_the_marker():
    """`pytest -m "not ffcv" --collect-only` (a fresh process) imports neither numba nor FFCV: a test module that
    imported them at the top would make every run pay numba's import and break without the ffcv extra. Where CUDA
    is absent the `gpu` tests are deselected (and only they, besides the -m expression); with CUDA they run."""
    out = subprocess.run([sys.executable, "-c", COLLECT], cwd=REPO, env=cli_env(), capture_output=True, text=True,
                         timeout=600)
    line = [x for x in out.stdout.splitlines() if x.startswith("PROBE ")]
    assert out.returncode == 0 and line, out.stdout[-3000:] + out.stderr[-3000:]
    probe = json.loads(line[-1][len("PROBE "):])
    assert probe["rc"] == 0 and probe["imported"] == [], probe["imported"]
    assert probe["selected"] and not [n for n, marks in probe["selected"] if "ffcv" in marks]
    gpu = [n for n, marks in probe["deselected"] if "gpu" in marks and "ffcv" not in marks]
    assert all("ffcv" in marks or "gpu" in marks for _, marks in probe["deselected"])
    if torch.cuda.is_available():
        assert not gpu
    else:  # the GPU tests of the pipeline, compile and depthwise-conv files
        assert len(gpu) >= 4 and not [n for n, marks in probe["selected"] if "gpu" in marks], gpu


def test_a_skip_is_reported_as_a_failure(tmp_path):
    """The no_skips plugin (tests/conftest.py loads it) turns a skip (here pytest.importorskip of a module that is
    not installed) into a failure that names the rule; an xfail stays an xfail."""
    (tmp_path / "test_skips.py").write_text(
        "import pytest\n\n"
        "def test_missing_component():\n    pytest.importorskip('lk_ablate_no_such_module')\n\n"
        "@pytest.mark.xfail(reason='known', strict=True)\ndef test_known():\n    assert False\n")
    out = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "no_skips",
                          str(tmp_path)], cwd=tmp_path, env=cli_env(), capture_output=True, text=True, timeout=300)
    assert out.returncode == 1, out.stdout[-3000:]
    assert "1 failed, 1 xfailed" in out.stdout, out.stdout[-3000:]
    assert "tests never skip (docs/testing.md); it tried to skip: could not import 'lk_ablate_no_such_module'" \
        in out.stdout
