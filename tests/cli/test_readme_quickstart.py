"""The README's quick start, run as written (its install line aside) with ``bash -e``."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[2] / "README.md"


def quick_start_script() -> str:
    """The README's first shell block, without the line that creates a venv and installs
    (the test runs against the packages this environment installed)."""
    block = re.findall(r"```bash\n(.*?)```", README.read_text(), re.S)[0]
    lines = block.splitlines()
    assert lines[0].startswith("python3.11 -m venv"), "the quick start starts by installing"
    return "\n".join(lines[1:]) + "\n"


def test_readme_quick_start_runs_twice_in_one_folder(tmp_path: Path) -> None:
    if shutil.which("llm-proxy-db") is None:
        pytest.fail("the llm-proxy-db console script is not on PATH")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DB_", "DATABASE_"))}
    script = tmp_path / "quickstart.sh"
    script.write_text(quick_start_script())
    for run in (1, 2):
        done = subprocess.run(
            ["bash", "-e", str(script)], cwd=tmp_path, env=env, capture_output=True, text=True
        )
        assert done.returncode == 0, f"run {run}: {done.stderr}"
        assert "remaining: 0" in done.stdout
        assert "has used all of its 3 requests" in done.stderr  # the refused 4th request
        assert "Traceback" not in done.stderr
        assert "token.use" in done.stdout and "failure" in done.stdout  # the audit trail
    assert (tmp_path / "data" / "llm-proxy.db").is_file()
