"""timm's own model test suite (tests/test_models.py from the installed timm's sdist) on the slab-edge zoo.

    python tests/run_timm_suite.py fetch              # download and cache the suite (`make venv` does it)
    python tests/run_timm_suite.py run [-n 2] [ARGS]  # run it on the zoo (`make test` does it)

`run` selects the zoo with -k "slab or prepbn" (`import slab_edge` registers it in timm: loaded as a pytest
plugin), uses the suite's own pytest configuration (timm's pyproject.toml: markers, testpaths), prints the
pass count and exits non-zero on any failure, on an empty selection, or when the sdist cannot be fetched.
-k replaces the selection (e.g. -k "slab_pvt_tiny and fx"); other ARGS go to pytest (e.g. -x, --durations=20).

The suite is cached per timm version under <venv>/timm-suite/<version>/ (git-ignored with .venv/), so a
timm upgrade fetches the matching tests on the next run.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tarfile
import tempfile
import time
import xml.etree.ElementTree as ET
from importlib.metadata import version
from pathlib import Path

from slab_edge.io import atomic_write_bytes

ZOO_SELECTION = "slab or prepbn"
#: what the suite needs from the sdist; test_models.py imports nothing else from timm's tests/
SUITE_FILES = ("pyproject.toml", "tests/conftest.py", "tests/test_models.py")


def suite_dir(timm_version: str) -> Path:
    return Path(sys.prefix) / "timm-suite" / timm_version


def fetch(timm_version: str) -> Path:
    """The cached suite for `timm_version`, downloading timm's sdist from the package index if needed.

    Raises:
        SystemExit: pip cannot fetch the sdist, or it lacks the suite's files.
    """
    root = suite_dir(timm_version)
    if all((root / name).is_file() for name in SUITE_FILES):
        return root
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--no-binary", ":all:"]
        done = subprocess.run([*cmd, f"timm=={timm_version}", "-d", tmp], capture_output=True, text=True)
        sdists = sorted(Path(tmp).glob(f"timm-{timm_version}.tar.gz"))
        if done.returncode or not sdists:
            reason = (done.stderr.strip().splitlines() or ["no sdist downloaded"])[-1]
            raise SystemExit(f"cannot fetch the timm {timm_version} sdist for its test suite: {reason}")
        with tarfile.open(sdists[0]) as tar:
            for name in SUITE_FILES:  # read members by name: nothing else is unpacked
                try:
                    data = tar.extractfile(f"timm-{timm_version}/{name}").read()
                except (KeyError, AttributeError):
                    raise SystemExit(f"the timm {timm_version} sdist has no {name}") from None
                atomic_write_bytes(root / name, data)
    return root


def run(timm_version: str, workers: int, selection: str, pytest_args: list[str]) -> int:
    """Run the cached suite on the zoo; returns the exit status (0 only if all selected tests passed)."""
    root = fetch(timm_version)
    env = dict(os.environ)
    if workers > 1:  # one intra-op thread per worker: OpenMP threads spin against each other otherwise
        env.setdefault("OMP_NUM_THREADS", "1")
    with tempfile.TemporaryDirectory() as tmp:
        report = Path(tmp) / "report.xml"
        cmd = [
            sys.executable, "-m", "pytest", str(root / "tests" / "test_models.py"),
            "-c", str(root / "pyproject.toml"), "--rootdir", str(root), "-p", "slab_edge",
            "-k", selection, "-q", "-rfEs", "-p", "no:cacheprovider", f"--junitxml={report}",
            "-W", "ignore::pytest.PytestUnknownMarkWarning",  # @pytest.mark.timeout without pytest-timeout
            "-n", str(workers) if workers > 1 else "0", *pytest_args,
        ]  # fmt: skip
        start = time.monotonic()
        status = subprocess.run(cmd, env=env).returncode
        seconds = time.monotonic() - start
        counts = _counts(report)
    passed = counts["tests"] - counts["failures"] - counts["errors"] - counts["skipped"]
    print(
        f"timm {timm_version} tests/test_models.py -k {selection!r}: {passed} passed, "
        f"{counts['failures']} failed, {counts['errors']} errors, {counts['skipped']} skipped "
        f"of {counts['tests']} ({seconds:.0f} s)"
    )
    if status == 0 and passed == 0:
        print("no test of timm's suite ran on the zoo", file=sys.stderr)
        return 1
    return status


def _counts(report: Path) -> dict[str, int]:
    """tests / failures / errors / skipped from pytest's JUnit XML report (zeros when pytest wrote none)."""
    keys = ("tests", "failures", "errors", "skipped")
    suites = list(ET.parse(report).getroot().iter("testsuite")) if report.is_file() else []
    return {k: sum(int(s.get(k, 0)) for s in suites) for k in keys}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("command", choices=("fetch", "run"), nargs="?", default="run")
    parser.add_argument("-n", "--workers", type=int, default=1, help="pytest-xdist workers (default: 1)")
    parser.add_argument("-k", dest="selection", default=ZOO_SELECTION, help=f"default: {ZOO_SELECTION!r}")
    args, pytest_args = parser.parse_known_args(argv)
    timm_version = version("timm")
    if args.command == "fetch":
        print(f"timm {timm_version} test suite: {fetch(timm_version)}")
        return 0
    return run(timm_version, args.workers, args.selection, pytest_args)


if __name__ == "__main__":
    sys.exit(main())
