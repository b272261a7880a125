"""The TensorRT session with plugin layers, against the fake `tensorrt` module: the plugin library the sidecar
names (or `plugin=` / `--plugin`) is found, checked and loaded into the registry before the engine is
deserialized; a missing, foreign, refused or wrong library is one clear error before any GPU work.

The fake engine refuses to deserialize until the plugins it needs are registered, as TensorRT does; stand-in
plugin libraries are real shared objects (tests/conftest.py `plugin_libraries`).
"""

from __future__ import annotations

import hashlib
import json
import shutil

import numpy as np
import pytest
from fake_trt import SLA_CREATOR, batch_of, write_engine
from runtime_helpers import write_image

from slab_edge import native
from slab_edge.errors import BackendError
from slab_edge.runtime import load
from slab_edge.runtime.metadata import sidecar_path

SLA = dict(zip(("name", "version", "namespace"), SLA_CREATOR))


def plugin_entry(library, serialized=False, sha256=None):
    return {
        "library": library.name,
        "sha256": sha256 or hashlib.sha256(library.read_bytes()).hexdigest(),
        "plugins": [SLA],
        "serialized_in_engine": serialized,
    }


@pytest.fixture()
def plugin_fakes(install_fakes):
    """Fakes whose engine has a SlabLinearAttention plugin layer."""
    return install_fakes(engine_plugins=(SLA_CREATOR,))


def test_sidecar_plugin_beside_the_engine_is_loaded_before_deserializing(
    plugin_fakes, tmp_path, plugin_libraries
):
    library = tmp_path / "libslab_trt_plugin.so"
    shutil.copy(plugin_libraries.plugin, library)
    engine = write_engine(tmp_path, plugins=[plugin_entry(library)])
    with load(engine) as session:
        assert session.plugin_libraries == [str(library)]
        assert session.run(batch_of(2))["logits"].shape == (2, 5)
    log = plugin_fakes.log
    assert ("load_library", str(library)) in log
    assert log.first("load_library") < log.first("deserialize_cuda_engine")
    assert log.first("load_library") < log.first("cudaSetDevice")  # library trouble shows before GPU work


def test_sidecar_plugin_from_the_ops_folder(plugin_fakes, tmp_path, plugin_libraries, monkeypatch):
    ops = tmp_path / "ops"
    ops.mkdir()
    built = ops / native.LIBRARIES["trt"]
    shutil.copy(plugin_libraries.plugin, built)
    monkeypatch.setenv(native.OPS_DIR_ENV, str(ops))
    engine_dir = tmp_path / "engine"
    engine_dir.mkdir()
    with load(write_engine(engine_dir, plugins=[plugin_entry(built)])) as session:
        assert session.plugin_libraries == [str(built)]


def test_missing_plugin_library_fails_before_the_gpu(
    plugin_fakes, tmp_path, plugin_libraries, no_built_plugin
):
    entry = plugin_entry(plugin_libraries.plugin) | {"library": "libslab_trt_plugin.so"}
    wanted = r"^model\.engine needs the TensorRT plugin library libslab_trt_plugin\.so \(slab::SlabLinearAtt"
    with pytest.raises(BackendError, match=wanted + r"ention v1\): not found beside the engine.*--plugin$"):
        load(write_engine(tmp_path, plugins=[entry]))
    names = plugin_fakes.log.names()
    assert "cudaSetDevice" not in names and "deserialize_cuda_engine" not in names


def test_explicit_plugin_overrides_the_sidecar(plugin_fakes, tmp_path, plugin_libraries, no_built_plugin):
    entry = plugin_entry(plugin_libraries.plugin) | {"library": "somewhere-else.so"}
    with load(write_engine(tmp_path, plugins=[entry]), plugin=plugin_libraries.plugin) as session:
        assert session.plugin_libraries == [str(plugin_libraries.plugin)]
        assert session.run(batch_of(1))["logits"].shape == (1, 5)


@pytest.mark.parametrize(
    "library,trt_options,match",
    [
        ("not_a_library", {}, r"libnotalibrary\.so: cannot be loaded as a shared library"),
        (
            "no_entry_points",
            {},
            r"is not a TensorRT plugin library: it does not export getCreators, setLogger",
        ),
        ("plugin", {"plugin_refused": True}, r"TensorRT 10\.3\.0\.30 refused plugin library .*libplugin\.so"),
        (
            "plugin",
            {"plugin_provides": ()},
            r"libplugin\.so loaded but does not register slab::SlabLinearAtt",
        ),
    ],
)
def test_bad_plugin_libraries(install_fakes, tmp_path, plugin_libraries, library, trt_options, match):
    fakes = install_fakes(engine_plugins=(SLA_CREATOR,), **trt_options)
    path = getattr(plugin_libraries, library)
    with pytest.raises(BackendError, match=match) as caught:
        load(write_engine(tmp_path, plugins=[plugin_entry(plugin_libraries.plugin)]), plugin=path)
    assert "\n" not in str(caught.value)
    assert "deserialize_cuda_engine" not in fakes.log.names() and fakes.cudart.live == {}


def test_malformed_sidecar_plugin_entry(plugin_fakes, tmp_path):
    with pytest.raises(BackendError, match=r"model\.engine\.json: malformed plugins entry \{'library'"):
        load(write_engine(tmp_path, plugins=[{"library": "x.so", "plugins": [{"version": "1"}]}]))
    assert "deserialize_cuda_engine" not in plugin_fakes.log.names()


def test_engine_with_plugin_layers_but_no_plugin_named(plugin_fakes, tmp_path):
    """A trtexec engine whose sidecar does not name its plugin: TensorRT cannot deserialize it."""
    with pytest.raises(
        BackendError, match=r"could not deserialize the engine .*a plugin library it needs is"
    ):
        load(write_engine(tmp_path))
    assert plugin_fakes.cudart.live == {}


def test_plugin_serialized_in_a_version_compatible_plan(
    plugin_fakes, tmp_path, plugin_libraries, no_built_plugin
):
    plugin_fakes.trt.plugins_in_plan = True
    options = {"version_compatible": True}
    entry = plugin_entry(plugin_libraries.plugin, serialized=True)
    with load(write_engine(tmp_path, version="10.0.1", options=options, plugins=[entry])) as session:
        assert session.plugin_libraries == []
        session.run(batch_of(1))
    assert "load_library" not in plugin_fakes.log.names()
    assert ("engine_host_code_allowed", True) in plugin_fakes.log


def test_other_build_of_the_library_warns(plugin_fakes, tmp_path, plugin_libraries):
    library = tmp_path / "libplugin.so"
    shutil.copy(plugin_libraries.plugin, library)
    engine = write_engine(tmp_path, plugins=[plugin_entry(library, sha256="0" * 64)])
    with pytest.warns(UserWarning, match=r"is not the build the engine was made with \(sha256 differs\)"):
        load(engine).close()


def test_a_library_is_loaded_once_per_process(plugin_fakes, tmp_path, plugin_libraries):
    library = tmp_path / "libplugin.so"
    shutil.copy(plugin_libraries.plugin, library)
    engine = write_engine(tmp_path, plugins=[plugin_entry(library) | {"plugins": []}])
    for _ in range(2):  # without the plugin ids only the process's own record prevents a second load
        with load(engine) as session:
            session.run(batch_of(1))
    assert plugin_fakes.log.names().count("load_library") == 1


def test_runtime_cli_plugin_option(plugin_fakes, tmp_path, plugin_libraries, capsys):
    from slab_edge.cli import main

    engine = write_engine(tmp_path, plugins=[plugin_entry(plugin_libraries.plugin) | {"library": "gone.so"}])
    images = tmp_path / "images"
    images.mkdir()
    write_image(images / "a.png", "RGB", size=(8, 8))
    assert main(["infer", str(engine), str(images / "a.png"), "--plugin", str(plugin_libraries.plugin)]) == 0
    assert ("load_library", str(plugin_libraries.plugin)) in plugin_fakes.log
    capsys.readouterr()
    assert main(["infer", str(engine), str(images / "a.png"), "--plugin", str(tmp_path / "none.so")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "TensorRT plugin library not found" in err


def test_sidecar_for_a_trtexec_engine_with_plugins(
    plugin_fakes, tmp_path, tiny_onnx, plugin_libraries, capsys
):
    from slab_edge.runtime.sidecar import main as sidecar_main

    engine = write_engine(tmp_path, sidecar=False)
    library = plugin_libraries.plugin
    args = [str(engine), "--onnx", str(tiny_onnx), "--precision", "fp16", "--plugin", str(library)]
    assert sidecar_main(args) == 0, capsys.readouterr().err
    log = plugin_fakes.log
    assert log.first("load_library") < log.first("deserialize_cuda_engine")
    side = json.loads(sidecar_path(engine).read_text())
    assert side["plugins"] == [plugin_entry(library) | {"plugins": []}]
    with load(engine, plugin=library) as session:
        np.testing.assert_array_equal(session.run(batch_of(1))["logits"].shape, (1, 5))
