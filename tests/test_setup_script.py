"""scripts/setup.sh reports a failed stage in a few lines: what failed, how to fix it, and the tail of pip's log.

The successful path (a full install into a fresh virtual environment, minutes) is checked by hand / CI, see README.
"""

import subprocess
import venv
from pathlib import Path

SETUP = Path(__file__).resolve().parents[1] / "scripts" / "setup.sh"


def run_setup(python: str, tmp_path: Path) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(SETUP)], capture_output=True, text=True, timeout=120,
                          env={"PATH": "/usr/bin:/bin", "PYTHON": python, "TMPDIR": str(tmp_path)})


def test_a_missing_interpreter_is_named(tmp_path):
    done = run_setup(str(tmp_path / "no-python"), tmp_path)
    assert done.returncode == 1
    assert "no Python interpreter" in done.stderr and "PYTHON=" in done.stderr
    assert "Traceback" not in done.stdout + done.stderr


def test_a_failed_stage_prints_the_fix_and_the_log_tail(tmp_path):
    venv.create(tmp_path / "env", with_pip=False)  # an environment without pip: the pip check fails
    python = str(tmp_path / "env" / "bin" / "python")
    done = run_setup(python, tmp_path)
    assert done.returncode == 1
    assert done.stdout.startswith(f"checking {python} ... ")
    assert "FAILED" in done.stderr and "ensurepip" in done.stderr
    assert "last lines of" in done.stderr and "No module named pip" in done.stderr  # pip's own output, from the log
    assert "remix-rft is installed" not in done.stdout
