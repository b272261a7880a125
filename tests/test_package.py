"""Package-level contracts: torch-free import, lazy timm registration, public API, CLI dispatch."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import slab_edge
from slab_edge import cli

BLOCK_TORCH = textwrap.dedent(
    """
    import importlib.abc, sys
    class Block(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name == "torch" or name.startswith("torch."):
                raise ImportError("torch is blocked in this test")
    sys.meta_path.insert(0, Block())
    """
)


def run_python(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)


def test_import_does_not_import_torch():
    proc = run_python(
        BLOCK_TORCH
        + "import slab_edge, slab_edge.errors, slab_edge.io, slab_edge.runtime.metadata\nprint('ok')"
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "ok"


def test_zoo_registers_when_timm_is_imported_after_slab_edge():
    proc = run_python("import slab_edge, timm\nprint(len(timm.list_models('slab_*')))")
    assert proc.returncode == 0, proc.stderr
    assert int(proc.stdout) > 0


def test_zoo_registers_when_timm_is_imported_first():
    proc = run_python("import timm, slab_edge\nprint(len(timm.list_models('slab_*')))")
    assert proc.returncode == 0, proc.stderr
    assert int(proc.stdout) > 0


def test_version_and_lazy_api():
    assert slab_edge.__version__.count(".") == 2
    assert callable(slab_edge.reparameterize_model)


def test_every_cli_command_has_a_module_with_the_contract():
    import importlib

    for name, (module, _) in cli.COMMANDS.items():
        mod = importlib.import_module(f"slab_edge.commands.{module}")
        assert callable(getattr(mod, "add_arguments", None)), name
        assert callable(getattr(mod, "run", None)), name


def test_cli_without_command_prints_help_and_fails(capsys):
    assert cli.main([]) == 2
    assert "train" in capsys.readouterr().out
