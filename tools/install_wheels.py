"""Build fresh wheels of this repository's distributions and install them.

    python tools/install_wheels.py core[testing] backends/sqlite

Every tox env runs this in ``commands_pre`` so that the tests exercise what a user
installs (a file missing from a wheel fails the tests), never stale or editable code.
Each folder is built with ``pip wheel --no-build-isolation`` (the env provides hatchling),
installed with ``--force-reinstall --no-deps``, then its dependencies are resolved.
"""

from __future__ import annotations

import re
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _pip(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "pip", "--disable-pip-version-check", *args], check=True)


def main(argv: list[str]) -> int:
    if not argv:
        print(__doc__, file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="llm-proxy-db-wheels-") as out:
        requirements = []
        for arg in argv:
            match = re.fullmatch(r"([^\[]+)(\[[^\]]+\])?", arg)
            if match is None or not (ROOT / match.group(1) / "pyproject.toml").is_file():
                print(f"not a distribution folder: {arg}", file=sys.stderr)
                return 2
            before = set(Path(out).glob("*.whl"))
            _pip(
                "wheel",
                "--quiet",
                "--no-deps",
                "--no-build-isolation",
                "--wheel-dir",
                out,
                str(ROOT / match.group(1)),
            )
            (wheel,) = set(Path(out).glob("*.whl")) - before
            requirements.append(f"{wheel}{match.group(2) or ''}")
        _pip(
            "install",
            "--quiet",
            "--force-reinstall",
            "--no-deps",
            *[r.split("[")[0] for r in requirements],
        )
        _pip("install", "--quiet", *requirements)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
