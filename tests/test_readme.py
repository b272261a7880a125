"""The READMEs' ```bash blocks are commands that work.

- fast, every README: each `slab-edge <command> ...` line (also through the wrapper scripts, e.g.
  `python runtime/infer.py`, `torchrun ... models/train.py`) names a real command and parses with that
  command's own argparse parser (nothing runs); scripts named exist; `make` targets exist.
- slow, opt-in: the top-level README's `## Commands` block runs line by line, in order, in a copy of the
  working tree after `slab-edge demo` (what `make demo` runs), each line exiting 0. A line that needs what
  this machine lacks (a TensorRT builder, a GPU) is skipped with its reason printed, and the skips are
  repeated as a warning in pytest's summary; no line is dropped silently.

    SLAB_EDGE_SLOW=1 pytest tests/test_readme.py -s -n 0         # prints each line's status and time
    SLAB_EDGE_README_DEMO=runs/demo SLAB_EDGE_SLOW=1 pytest ...  # reuse a finished demo folder
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import importlib.util
import io
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import pytest

from slab_edge import cli

ROOT = Path(__file__).resolve().parents[1]
#: folders that hold no project README (virtualenvs, run outputs, caches)
SKIP_DIRS = {".venv", "runs", "build", "dist", "node_modules", "__pycache__"}
#: shell operators that separate simple commands on one line
OPERATORS = {"&&", "||", ";", "|", "&", "(", ")", "$(", "`"}
#: `main(["train", "--ablation", *sys.argv[1:]])`: a script that is a slab-edge command under another name
WRAPPER = re.compile(r'main\(\[\s*"([\w-]+)"((?:\s*,\s*"[^"]*")*)\s*,\s*\*sys\.argv\[1:\]\s*\]\)')


@dataclass
class Line:
    """One command line of a ```bash block (continuation lines joined)."""

    readme: Path
    lineno: int
    section: str  # the heading above the block
    text: str

    def where(self) -> str:
        return f"{self.readme.relative_to(ROOT)}:{self.lineno}"


def readmes() -> list[Path]:
    found = []
    for path in sorted(ROOT.rglob("README.md")):
        parts = path.relative_to(ROOT).parts[:-1]
        if not any(p in SKIP_DIRS or p.startswith(".") for p in parts):
            found.append(path)
    return found


def bash_lines(readme: Path) -> list[Line]:
    """Every command line inside the file's ```bash blocks (comment-only and blank lines left out)."""
    lines: list[Line] = []
    section, in_block, pending, start = "", False, "", 0
    for number, raw in enumerate(readme.read_text(encoding="utf-8").splitlines(), 1):
        stripped = raw.strip()
        if not in_block:
            if stripped.startswith("#"):
                section = stripped.lstrip("#").strip()
            elif stripped.startswith("```bash"):
                in_block = True
            continue
        if stripped.startswith("```"):
            in_block = False
            continue
        if not pending:
            start = number
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        text, pending = (pending + stripped).strip(), ""
        if text and not text.startswith("#"):
            lines.append(Line(readme, start, section, text))
    return lines


def simple_commands(text: str) -> list[list[str]]:
    """`a x && b y | c  # note` -> [["a", "x"], ["b", "y"], ["c"]] (shell words, comments dropped)."""
    lexer = shlex.shlex(text, posix=True, punctuation_chars=True)
    lexer.whitespace_split = True
    commands, current, redirect = [], [], False
    for token in lexer:
        if token in OPERATORS or set(token) <= set("&|;()"):
            if current:
                commands.append(current)
            current = []
        elif set(token) <= set("<>&"):  # a redirection: it, its fd (2>) and its target are no arguments
            if current and current[-1].isdigit():
                current.pop()
            redirect = True
        elif redirect:
            redirect = False
        else:
            current.append(token)
    if current:
        commands.append(current)
    return commands


def wrapper_command(script: Path) -> list[str] | None:
    """["train", "--ablation"] for a script that runs `main(["train", "--ablation", *sys.argv[1:]])`."""
    if not script.is_file():
        return None
    match = WRAPPER.search(script.read_text(encoding="utf-8"))
    if match is None:
        return None
    return [match.group(1), *re.findall(r'"([^"]*)"', match.group(2))]


@dataclass
class Invocation:
    """A slab-edge command found in a line: its argv after `slab-edge`, and the script it came through."""

    argv: list[str]
    via: str = "slab-edge"


def invocations(words: list[str], folder: Path = ROOT) -> tuple[Invocation | None, str | None]:
    """(the slab-edge invocation in one simple command, a script it names that is missing).

    Scripts are looked up from the repository root, then from `folder` (the README's own folder)."""
    while words and (re.match(r"^[A-Za-z_]\w*=", words[0]) or words[0] in ("sudo", "env", "exec")):
        words = words[1:]
    if not words:
        return None, None
    head = os.path.basename(words[0])
    if head == "slab-edge":
        return Invocation(words[1:]), None
    if head not in ("python", "python3", "torchrun"):
        return None, None
    if "-m" in words:
        at = words.index("-m")
        if words[at + 1 : at + 2] == ["slab_edge.cli"]:
            return Invocation(words[at + 2 :], "python -m slab_edge.cli"), None
        return None, None
    script_at = next((i for i, w in enumerate(words) if w.endswith(".py")), None)
    if script_at is None:
        return None, None
    script = words[script_at]
    if script.startswith(("/", "$", "~")):  # outside the repository (a device's copy): not checked
        return None, None
    path = next((base / script for base in (ROOT, folder) if (base / script).is_file()), None)
    if path is None:
        return None, script
    wrapped = wrapper_command(path)
    if wrapped is None:
        return None, None
    return Invocation([*wrapped, *words[script_at + 1 :]], script), None


def check_parses(argv: list[str]) -> str | None:
    """None when `slab-edge <argv>` names a command and its parser accepts the arguments, else why not."""
    rest = list(argv)
    while rest and rest[0] in ("--debug",):  # top-level options before the command
        rest = rest[1:]
    if not rest or rest[0].startswith("-"):
        return f"no command in {argv}"
    command, args = rest[0], rest[1:]
    if command not in cli.COMMANDS:
        return f"{command!r} is not a slab-edge command (known: {', '.join(cli.COMMANDS)})"
    module_name, help_text = cli.COMMANDS[command]
    module = importlib.import_module(f"slab_edge.commands.{module_name}")
    parser = argparse.ArgumentParser(prog=f"slab-edge {command}", description=help_text)
    module.add_arguments(parser)
    errors = io.StringIO()
    try:
        with contextlib.redirect_stderr(errors), contextlib.redirect_stdout(io.StringIO()):
            parser.parse_args(args)
    except SystemExit as exit_:
        if exit_.code not in (0, None):
            said = errors.getvalue().strip().splitlines()
            return said[-1] if said else f"argparse exit {exit_.code}"
    return None


def readme_id(path: Path) -> str:
    return str(path.relative_to(ROOT))


@pytest.mark.parametrize("readme", readmes(), ids=readme_id)
def test_readme_commands_parse(readme):
    problems, checked = [], 0
    makefile = (ROOT / "Makefile").read_text(encoding="utf-8")
    for line in bash_lines(readme):
        for words in simple_commands(line.text):
            if words[0] == "make":
                for target in (w for w in words[1:] if not w.startswith("-") and "=" not in w):
                    if not re.search(rf"^{re.escape(target)}\s*:", makefile, re.M):
                        problems.append(f"{line.where()}: make target {target!r} not in the Makefile")
                continue
            found, missing = invocations(words, readme.parent)
            if missing:
                problems.append(f"{line.where()}: {missing} does not exist")
            if found is None:
                continue
            checked += 1
            why = check_parses(found.argv)
            if why:
                problems.append(f"{line.where()}: {found.via} {shlex.join(found.argv)}\n    -> {why}")
    print(f"{readme_id(readme)}: {checked} slab-edge command(s) parsed")
    assert not problems, "\n".join(problems)


def test_top_level_readme_commands_are_all_slab_edge():
    """The Commands block is what the slow test runs: every line in it must be a slab-edge command."""
    lines = commands_block()
    assert len(lines) >= 10
    for line in lines:
        for words in simple_commands(line.text):
            assert words[0] == "slab-edge", f"{line.where()}: {line.text}"
            assert check_parses(words[1:]) is None, f"{line.where()}: {line.text}"


def test_parsing_helpers():
    assert simple_commands('slab-edge a -o x/ && slab-edge b x/ --prompt "def main(" # c') == [
        ["slab-edge", "a", "-o", "x/"], ["slab-edge", "b", "x/", "--prompt", "def main("]
    ]  # fmt: skip
    torchrun = ["torchrun", "--nproc_per_node", "2", "models/train.py", "--device", "cpu"]
    assert invocations(torchrun)[0].argv == ["train", "--device", "cpu"]
    assert invocations(["python", "models/ablation_digits.py", "--epochs", "1"])[0].argv[:2] == [
        "train", "--ablation"
    ]  # fmt: skip
    assert invocations(["python", "nowhere/x.py"]) == (None, "nowhere/x.py")
    assert invocations(["python3", "run_on_device.py"], ROOT / "examples/04_run_on_device") == (None, None)
    assert simple_commands("python3 x.py --out o 2>&1 | tee log") == [
        ["python3", "x.py", "--out", "o"],
        ["tee", "log"],
    ]
    assert check_parses(["infer", "m.onnx", "photos/", "--top-k", "3"]) is None
    assert "unrecognized arguments: --no-such-flag" in check_parses(
        ["infer", "m.onnx", "x/", "--no-such-flag"]
    )
    assert "not a slab-edge command" in check_parses(["nonsense"])


# -- the slow half: run the Commands block ---------------------------------------------------------------
def commands_block() -> list[Line]:
    return [line for line in bash_lines(ROOT / "README.md") if line.section == "Commands"]


def _builder() -> str | None:
    return next((m for m in ("tensorrt", "tensorrt_rtx") if importlib.util.find_spec(m) is not None), None)


def _cuda() -> bool:
    try:
        import torch

        return torch.cuda.is_available()
    except ImportError:
        return False


def missing_requirement(argv: list[str]) -> str | None:
    """Why this machine cannot run `slab-edge <argv>` (None: it can)."""
    command = argv[0] if argv else ""
    if command == "build" and _builder() is None:
        return "needs TensorRT 10/11 or TensorRT-RTX (pip install tensorrt-rtx-cu13 builds on a CPU)"
    if command in ("infer", "bench", "compare") and any(a.endswith((".engine", ".plan")) for a in argv):
        return "runs a TensorRT engine: needs TensorRT and its GPU (TensorRT-RTX builds here but cannot run)"
    if any(p in argv for p in ("cuda", "tensorrt")) and "--provider" in argv and not _cuda():
        return "ONNX Runtime CUDA / TensorRT provider: needs a GPU"
    if "--device" in argv and argv[argv.index("--device") + 1 :][:1] == ["cuda"] and not _cuda():
        return "needs a CUDA GPU"
    return None


def _slow_enabled(config) -> bool:
    markexpr = config.getoption("-m", default="") or ""
    return os.environ.get("SLAB_EDGE_SLOW") == "1" or ("slow" in markexpr and "not slow" not in markexpr)


def _copy_tree(target: Path) -> None:
    """The working tree as a fresh clone has it: tracked and new files, no ignored ones (.venv, runs, built
    libraries)."""
    try:
        listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                                cwd=ROOT, capture_output=True, check=True).stdout  # fmt: skip
        files = [f for f in listed.decode().split("\0") if f]
    except (OSError, subprocess.CalledProcessError):
        files = None
    if files is None:  # not a git checkout: everything but what .gitignore names
        shutil.copytree(ROOT, target, symlinks=True, ignore=shutil.ignore_patterns(*SKIP_DIRS, ".git", "lib"))
        return
    for name in files:
        source = ROOT / name
        if source.is_file() and not source.is_symlink():
            (target / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target / name)


@pytest.mark.slow
def test_readme_commands_run_in_order(request, tmp_path):
    if not _slow_enabled(request.config):
        pytest.skip(
            "slow, opt-in (measured on 2 shared CPU cores: 16 min for the 16 lines, one vision and two LM "
            "trainings among them, plus 5 min for the demo unless SLAB_EDGE_README_DEMO names one): "
            "set SLAB_EDGE_SLOW=1 or pass -m slow"
        )
    clone = tmp_path / "clone"
    _copy_tree(clone)
    shim = tmp_path / "bin" / "slab-edge"  # what `pip install -e .` puts on PATH, for this checkout
    shim.parent.mkdir()
    shim.write_text(f'#!/bin/sh\nexec "{sys.executable}" -m slab_edge.cli "$@"\n')
    shim.chmod(0o755)
    env = {
        **os.environ,
        "PATH": f"{shim.parent}{os.pathsep}{os.environ.get('PATH', '')}",
        "PYTHONPATH": os.pathsep.join([str(clone), *filter(None, [os.environ.get("PYTHONPATH")])]),
    }
    env.pop("SLAB_EDGE_OPS_DIR", None)  # the copy's own build-ops output, as on a fresh clone

    report: list[str] = []
    t_start = time.perf_counter()

    def run(text: str, label: str) -> None:
        t0 = time.perf_counter()
        proc = subprocess.run(["bash", "-e", "-o", "pipefail", "-c", text], cwd=clone, env=env,
                              capture_output=True, text=True, timeout=3600)  # fmt: skip
        seconds = time.perf_counter() - t0
        status = "ok" if proc.returncode == 0 else f"exit {proc.returncode}"
        report.append(f"[{status:>7}] {seconds:7.1f} s  {label}")
        print(report[-1], flush=True)
        tail = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-25:])
        assert proc.returncode == 0, f"{label}\n  exit {proc.returncode} after {seconds:.1f} s:\n{tail}"

    reused = os.environ.get("SLAB_EDGE_README_DEMO")
    if reused:
        source = Path(reused).resolve()
        assert (source / "deploy.safetensors").is_file(), f"SLAB_EDGE_README_DEMO={reused}: not a demo folder"
        shutil.copytree(source, clone / "runs" / "demo")
        report.append(f"[ reused]          make demo: {source} copied to runs/demo")
        print(report[-1], flush=True)
    else:
        run("slab-edge demo", "make demo (its last step: slab-edge demo)")

    skipped = []
    for line in commands_block():
        reasons = [missing_requirement(words[1:]) for words in simple_commands(line.text)]
        reason = next((r for r in reasons if r), None)
        if reason:
            skipped.append(f"{line.where()}: {line.text}\n    skipped: {reason}")
            report.append(f"[skipped]            {line.text}\n             reason: {reason}")
            print(report[-1], flush=True)
            continue
        run(line.text, f"{line.where()}: {line.text}")
    print(f"README Commands block: {len(commands_block())} lines, {len(skipped)} skipped, "
          f"{time.perf_counter() - t_start:.0f} s in all (demo included)")  # fmt: skip
    if skipped:
        warnings.warn("README lines not run here:\n" + "\n".join(skipped), stacklevel=1)


def test_lines_needing_absent_hardware_are_named(monkeypatch):
    this = sys.modules[__name__]
    monkeypatch.setattr(this, "_builder", lambda: None)
    monkeypatch.setattr(this, "_cuda", lambda: False)
    assert "TensorRT-RTX" in missing_requirement(["build", "digits.fp16.onnx"])
    assert "engine" in missing_requirement(["infer", "digits.engine", "photos/"])
    assert "GPU" in missing_requirement(["infer", "m.onnx", "x.jpg", "--provider", "cuda"])
    assert "GPU" in missing_requirement(["fold", "--checkpoint", "c", "--output", "o", "--device", "cuda"])
    assert missing_requirement(["compare", "digits.onnx", "digits.fp16.onnx"]) is None
