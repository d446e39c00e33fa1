"""Tests of the repository around the code: every output that README's and docs/'s commands write
is ignored by git (a user's `git status` stays clean), and the test configuration reports why tests
were skipped."""
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
OUTPUT = re.compile(r"--out(?:_dir)?=([^\s`'\")|\\]+)")


def ignored(path):
    check = ["git", "check-ignore", "-q", "--no-index", path]
    return subprocess.run(check, cwd=REPO).returncode == 0


@pytest.mark.skipif(not (REPO / ".git").exists(),
                    reason="needs a git checkout (.gitignore is read by git)")
def test_every_output_of_the_documented_commands_is_ignored():
    docs = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
    named = {m for p in docs for m in OUTPUT.findall(p.read_text())
             if m not in ("FILE", "X.jsonl", "DIR")}
    assert {"out-stack", "curves.png", "samples.jsonl", "he_loss.json"} <= named  # found them
    # what a user names by themselves in the checkout's root, as README does elsewhere
    outputs = named | {"out", "data_cache", "s.jsonl", "he.json", "s_results.jsonl", "fig.png"}
    # a directory's contents: a run's checkpoint and log, a filter run's shards
    paths = [f"{o}/ckpt.pt" if "." not in Path(o).name else o for o in outputs]
    assert [p for p in paths if not ignored(p)] == []
    # and nothing of the project's own is ignored
    tracked = ["assets/mbpp.jsonl", "assets/fig21.png", "train.py", "docs/training.md",
               "config/fig21.py"]
    assert [p for p in tracked if ignored(p)] == []


def test_the_test_run_says_why_tests_were_skipped(tmp_path):
    (tmp_path / "test_one.py").write_text(
        "import pytest\n\n@pytest.mark.skip(reason='needs a CUDA GPU')\ndef test_gpu():\n"
        "    pass\n\ndef test_broken():\n    assert False\n")
    r = subprocess.run([sys.executable, "-m", "pytest", "-q", "-c", str(REPO / "pytest.ini"),
                        "--rootdir", str(tmp_path), "-p", "no:cacheprovider",
                        str(tmp_path / "test_one.py")], capture_output=True, text=True, timeout=120)
    assert "SKIPPED [1] " in r.stdout and "needs a CUDA GPU" in r.stdout, r.stdout
    # and the failures stay in the summary
    assert re.search(r"^FAILED \S*test_one.py::test_broken", r.stdout, re.M), r.stdout
