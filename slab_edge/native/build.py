"""Build the native libraries of `slab_edge.native` from the sources in csrc/ (torch-free).

    python -m slab_edge.native.build ort              # ONNX Runtime CPU custom ops -> slab_edge/native/lib
    python -m slab_edge.native.build ort-cuda torch-cuda --cuda-arch 87 90
    python -m slab_edge.native.build ort-cuda trt --compile-only    # CI: compile, link, check entry points
    slab-edge build-ops ort                           # the same command through the CLI

Targets (LIBRARIES in slab_edge.native) and their sources:
    ort         ort_custom_ops.cc                              g++ and the ONNX Runtime headers
    ort-cuda    ort_custom_ops.cc (-DSLAB_WITH_CUDA) + sla_attention_cuda.cu
    torch-cuda  sla_attention_cuda.cu                          (the C ABI of sla_attention.h, for ctypes)
    trt         trt_sla_plugin.cpp + sla_attention_cuda.cu     + the TensorRT headers

The toolchain comes from registry packages only, each fetched once into `toolchain_dir()` (in the virtual
environment when there is one) and checked against its SHA256:
    ONNX Runtime headers  Debian's libonnxruntime-dev (headers only; ORT_HEADERS) or $SLAB_EDGE_ORT_INCLUDE
    nvcc                  $SLAB_EDGE_NVCC, else the nvidia-cuda-nvcc wheel (+ the nvvm, crt and cuda-runtime
                          wheels of the same release) for the CUDA major.minor of the installed torch / CUDA
                          runtime wheel, else nvcc on PATH or in /usr/local/cuda
    TensorRT headers      $SLAB_EDGE_TRT_INCLUDE (a Jetson: /usr/include/aarch64-linux-gnu), else the headers
                          inside the kernel-lens wheel (TRT_HEADERS; the wheel is unpacked, never imported)
    host compiler         $CXX, else g++
A library is rebuilt only when a source, a header, a flag or the toolchain changed (a key beside it), and
is written atomically. `compile_only` builds against the headers alone: it links without the CUDA driver
or TensorRT libraries (their symbols stay unresolved), and without a shared source another part of the
project has not delivered yet (the CUDA kernel: what calls it stays unresolved too), and writes to a
separate folder, so CI without a GPU proves the code compiles and exports its entry points without ever
installing an untested library.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import io
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import urllib.request
import zipfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

from slab_edge.errors import BackendError, InputError
from slab_edge.io import atomic_path
from slab_edge.native import LIBRARIES, csrc_dir, default_build_dir

__all__ = [
    "DEFAULT_CUDA_ARCHS",
    "ENTRY_POINTS",
    "TARGETS",
    "build",
    "exported_symbols",
    "cuda_toolchain",
    "find_nvcc",
    "ort_include_dir",
    "tensorrt_include_dir",
    "toolchain_dir",
]

TARGETS = tuple(LIBRARIES)
#: CUDA architectures built when no GPU is visible: Jetson Orin (8.7) and Hopper (9.0)
DEFAULT_CUDA_ARCHS = ("87", "90")
TOOLCHAIN_ENV = "SLAB_EDGE_TOOLCHAIN_DIR"
NVCC_ENV = "SLAB_EDGE_NVCC"
ORT_INCLUDE_ENV = "SLAB_EDGE_ORT_INCLUDE"
TRT_INCLUDE_ENV = "SLAB_EDGE_TRT_INCLUDE"


@dataclass(frozen=True)
class Target:
    sources: tuple[str, ...]  #: the target's own source first, then the ones it shares (the CUDA kernel)
    defines: tuple[str, ...] = ()  #: for the host (C++) sources; a .cu compiles alike for every target
    ort: bool = False  #: needs the ONNX Runtime headers
    trt: bool = False  #: needs the TensorRT headers (which include the CUDA runtime's)
    version_script: str | None = None  #: linker version script in csrc (what the library exports)


TARGET_SOURCES: dict[str, Target] = {
    "ort": Target(("ort_custom_ops.cc",), ort=True),
    "ort-cuda": Target(("ort_custom_ops.cc", "sla_attention_cuda.cu"), ("SLAB_WITH_CUDA",), ort=True),
    "torch-cuda": Target(("sla_attention_cuda.cu",)),
    "trt": Target(
        ("trt_sla_plugin.cpp", "sla_attention_cuda.cu"), trt=True, version_script="trt_sla_plugin.map"
    ),
}

#: symbols each library must export (checked after every link); TensorRT's IPluginRegistry::loadLibrary looks
#: up setLoggerFinder and getCreators (IPluginV3 creators)
ENTRY_POINTS: dict[str, tuple[str, ...]] = {
    "ort": ("RegisterCustomOps",),
    "ort-cuda": ("RegisterCustomOps",),
    "torch-cuda": ("slab_sla_cuda_forward", "slab_sla_cuda_workspace_bytes", "slab_sla_status_string"),
    "trt": ("getCreators", "setLoggerFinder"),
}


@dataclass(frozen=True)
class DebianHeaders:
    """Headers inside a Debian package: fetched over HTTP (checked by SHA256), unpacked with the stdlib."""

    name: str
    version: str
    url: str
    sha256: str
    prefix: str  #: folder inside the package's data archive whose files are the headers


@dataclass(frozen=True)
class WheelHeaders:
    """Headers inside a PyPI wheel: fetched with pip (checked by SHA256), unpacked, never installed."""

    name: str
    version: str
    sha256: str
    prefix: str


#: onnxruntime 1.21 (ORT_API_VERSION 21); headers are architecture independent, so the amd64 package serves
#: every machine. The library asks the runtime for API 21: onnxruntime >= 1.21 loads it.
ORT_HEADERS = DebianHeaders(
    name="libonnxruntime-dev",
    version="1.21.0+dfsg-1",
    url="http://deb.debian.org/debian/pool/main/o/onnxruntime/libonnxruntime-dev_1.21.0+dfsg-1_amd64.deb",
    sha256="14f7d959d5deacbcf1504830d4189f91fc67382b399ed9ae9d3aa9c4050ced08",
    prefix="usr/include/onnxruntime/",
)
#: TensorRT 10.14 headers (NvInfer*.h)
TRT_HEADERS = WheelHeaders(
    name="kernel-lens",
    version="2.0.1",
    sha256="07cc714e8b5e7f34b672f7c7fad93febe7c747be5837ba276b1527370134ffe0",
    prefix="kernel_lens/include/tensorrt/",
)
#: CUDA 13 wheels that make up nvcc: the driver program, cicc (nvvm), the crt headers, the runtime headers
#: and libcudart, and CCCL (cuda_fp16.h includes <nv/target>)
NVCC_WHEELS = (
    "nvidia-cuda-nvcc",
    "nvidia-nvvm",
    "nvidia-cuda-crt",
    "nvidia-cuda-runtime",
    "nvidia-cuda-cccl",
)
#: CUDA major.minor -> tested releases of those wheels; another 13.x takes each wheel's newest X.Y release
NVCC_PINS = {
    "13.0": {
        "nvidia-cuda-nvcc": "13.0.88",
        "nvidia-nvvm": "13.0.88",
        "nvidia-cuda-crt": "13.0.88",
        "nvidia-cuda-runtime": "13.0.88",
        "nvidia-cuda-cccl": "13.0.85",
    }
}
DEFAULT_CUDA = "13.0"

Log = Callable[[str], None]


# -- toolchain ---------------------------------------------------------------------------------------------
def toolchain_dir() -> Path:
    """Where fetched toolchain parts are cached: $SLAB_EDGE_TOOLCHAIN_DIR, else inside the active virtual
    environment (git-ignored, removed with it), else ~/.cache/slab-edge/toolchain."""
    if os.environ.get(TOOLCHAIN_ENV):
        return Path(os.environ[TOOLCHAIN_ENV])
    if sys.prefix != sys.base_prefix:
        return Path(sys.prefix) / "share" / "slab-edge-toolchain"
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return cache / "slab-edge" / "toolchain"


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _check_sha256(data: bytes, expected: str, what: str) -> None:
    got = _sha256(data)
    if got != expected:
        raise BackendError(f"{what}: SHA256 {got} does not match the pinned {expected}; not used")


Files = Iterable[tuple[str, bytes, int]]  #: (relative path, content, unix mode), streamed one by one


def _install_tree(folder: Path, files: Files) -> Path:
    """Write `files` as `folder`, atomically (a temporary sibling renamed into place)."""
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
    try:
        for rel, data, mode in files:
            parts = Path(rel).parts
            if not parts or Path(rel).is_absolute() or ".." in parts:
                raise BackendError(f"refusing to unpack {rel!r} outside {folder}")
            path = tmp.joinpath(*parts)
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)
            path.chmod(0o755 if mode & 0o111 else 0o644)  # executables (nvcc, cicc) stay executable
        try:
            os.replace(tmp, folder)
        except OSError:
            if not folder.is_dir():  # another process installed it first: keep theirs
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return folder


def _zip_members(archive: zipfile.ZipFile, prefix: str, strip: bool = True) -> Files:
    """Files under `prefix` in a zip archive (a wheel), with the modes it records (nvcc must stay executable);
    paths relative to `prefix` when `strip`."""
    for info in archive.infolist():
        if info.filename.startswith(prefix) and not info.is_dir():
            rel = info.filename[len(prefix) :] if strip else info.filename
            yield rel, archive.read(info), (info.external_attr >> 16) & 0o777


def _deb_data_members(deb: bytes, prefix: str) -> list[tuple[str, bytes, int]]:
    """Files under `prefix` in a .deb (an `ar` archive whose data.tar.* holds the package's files)."""
    if not deb.startswith(b"!<arch>\n"):
        raise BackendError("not a Debian package (no ar header)")
    pos = 8
    while pos + 60 <= len(deb):
        header = deb[pos : pos + 60]
        name = header[:16].decode("ascii", "replace").strip().rstrip("/")
        size = int(header[48:58].decode("ascii").strip())
        body = deb[pos + 60 : pos + 60 + size]
        pos += 60 + size + (size & 1)
        if not name.startswith("data.tar"):
            continue
        files = []
        try:
            with tarfile.open(fileobj=io.BytesIO(body), mode="r:*") as archive:
                for member in archive.getmembers():
                    path = member.name.lstrip("./")
                    if member.isfile() and path.startswith(prefix):
                        files.append((path[len(prefix) :], archive.extractfile(member).read(), member.mode))
        except tarfile.ReadError as err:
            raise BackendError(f"cannot read {name} of the Debian package ({err})") from None
        return files
    raise BackendError("Debian package has no data.tar member")


def _download(url: str) -> bytes:
    try:
        with urllib.request.urlopen(url, timeout=120) as response:
            return response.read()
    except OSError as err:
        raise BackendError(f"cannot download {url} ({err})") from None


def _pip_download(requirements: list[str], dest: Path) -> list[Path]:
    """Wheels for `requirements` (exact pins) for this machine, without dependencies, via pip."""
    # few retries and a short timeout: an offline machine (the GPU machine) falls back to a local nvcc quickly
    command = [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:"]
    command += ["--retries", "1", "--timeout", "30"]
    result = subprocess.run([*command, "--dest", str(dest), *requirements], capture_output=True, text=True)
    if result.returncode != 0:
        lines = [ln for ln in result.stderr.splitlines() if ln.strip() and not ln.startswith("WARNING")]
        raise BackendError(f"pip could not download {' '.join(requirements)}: {lines[-1] if lines else '?'}")
    return sorted(dest.glob("*.whl"))


def _headers(env: str, marker: str, cached: Path, fetch: Callable[[], Files]) -> Path:
    """A header folder holding `marker`: $`env` if set (checked), else `cached`, filled by fetch() once."""
    if os.environ.get(env):
        folder = Path(os.environ[env])
        if not (folder / marker).is_file():
            raise InputError(f"${env}={folder} has no {marker}")
        return folder
    if (cached / marker).is_file():
        return cached
    return _install_tree(cached, fetch())


def ort_include_dir(log: Log | None = None) -> Path:
    """The ONNX Runtime C/C++ API headers: $SLAB_EDGE_ORT_INCLUDE, else ORT_HEADERS (fetched once)."""

    def fetch() -> Files:
        if log:
            log(f"fetching ONNX Runtime headers: {ORT_HEADERS.url}")
        deb = _download(ORT_HEADERS.url)
        _check_sha256(deb, ORT_HEADERS.sha256, ORT_HEADERS.url)
        return _deb_data_members(deb, ORT_HEADERS.prefix)

    cached = toolchain_dir() / f"onnxruntime-headers-{ORT_HEADERS.version}"
    return _headers(ORT_INCLUDE_ENV, "onnxruntime_cxx_api.h", cached, fetch)


def tensorrt_include_dir(log: Log | None = None) -> Path:
    """The TensorRT headers: $SLAB_EDGE_TRT_INCLUDE, else those of the TRT_HEADERS wheel (fetched once)."""

    def fetch() -> Files:
        if log:
            log(f"fetching TensorRT headers from the {TRT_HEADERS.name}=={TRT_HEADERS.version} wheel")
        with tempfile.TemporaryDirectory(prefix="slab-edge-wheel-") as tmp:
            (wheel,) = _pip_download([f"{TRT_HEADERS.name}=={TRT_HEADERS.version}"], Path(tmp))
            data = wheel.read_bytes()
        _check_sha256(data, TRT_HEADERS.sha256, wheel.name)
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            return list(_zip_members(archive, TRT_HEADERS.prefix))

    cached = toolchain_dir() / f"tensorrt-headers-{TRT_HEADERS.name}-{TRT_HEADERS.version}"
    return _headers(TRT_INCLUDE_ENV, "NvInfer.h", cached, fetch)


def cuda_major_minor() -> str:
    """CUDA major.minor to build for: the torch wheel's (+cuXYZ), else the installed CUDA runtime wheel's,
    else DEFAULT_CUDA."""
    try:
        local = metadata.version("torch").partition("+")[2]
    except metadata.PackageNotFoundError:
        local = ""
    match = re.fullmatch(r"cu(\d+)(\d)", local)
    if match:
        return f"{match.group(1)}.{match.group(2)}"
    try:
        return ".".join(metadata.version("nvidia-cuda-runtime").split(".")[:2])
    except metadata.PackageNotFoundError:
        return DEFAULT_CUDA


@dataclass(frozen=True)
class CudaToolchain:
    nvcc: Path
    include: Path | None  #: CUDA runtime headers (None: nvcc's own default)
    lib: Path | None  #: folder with libcudart.so.<major>
    version: str  #: e.g. "13.0.88" or nvcc's --version line

    def cudart_link_args(self) -> list[str]:
        """Link against the shared libcudart (the wheels ship only the versioned file, libcudart.so.13)."""
        if self.lib is None:
            return ["-lcudart"]
        if (self.lib / "libcudart.so").exists():
            return [f"-L{self.lib}", "-lcudart"]
        runtime = sorted(self.lib.glob("libcudart.so.[0-9]*"), key=lambda p: len(p.name))
        return [f"-L{self.lib}", f"-l:{runtime[0].name}" if runtime else "-lcudart"]


def _wheel_nvcc(major_minor: str, log: Log | None) -> CudaToolchain:
    """nvcc unpacked from the NVCC_WHEELS of CUDA `major_minor` (pip checks each wheel's hash against the
    index), cached in toolchain_dir()."""
    pins = NVCC_PINS.get(major_minor, {})
    requirements = [f"{name}=={pins.get(name, major_minor + '.*')}" for name in NVCC_WHEELS]
    tag = _sha256(" ".join(requirements).encode())[:10]
    root = toolchain_dir() / f"cuda-{major_minor}-{tag}"
    home = root / "nvidia" / f"cu{major_minor.split('.')[0]}"
    nvcc = home / "bin" / "nvcc"
    if not nvcc.is_file():
        if log:
            log(f"fetching nvcc for CUDA {major_minor} from PyPI: {' '.join(requirements)}")
        with tempfile.TemporaryDirectory(prefix="slab-edge-nvcc-") as tmp:
            wheels = _pip_download(requirements, Path(tmp))

            def files() -> Files:
                yield "WHEELS", "\n".join(w.name for w in wheels).encode() + b"\n", 0o644
                for wheel in wheels:
                    with zipfile.ZipFile(wheel) as archive:
                        yield from _zip_members(archive, "nvidia/", strip=False)

            _install_tree(root, files())
    if not (home / "lib64").exists():  # nvcc.profile links from lib64 (e.g. cudart_static for nvcc -shared)
        with contextlib.suppress(FileExistsError):
            (home / "lib64").symlink_to("lib")
    version = next((ln.split("-")[1] for ln in (root / "WHEELS").read_text().split() if "nvcc" in ln), "?")
    return CudaToolchain(nvcc=nvcc, include=home / "include", lib=home / "lib", version=version)


def _installed_cudart_lib() -> Path | None:
    """The lib folder of the installed nvidia-cuda-runtime wheel (what torch / onnxruntime-gpu load)."""
    try:
        files = metadata.files("nvidia-cuda-runtime") or []
    except metadata.PackageNotFoundError:
        return None
    for file in files:
        if file.name.startswith("libcudart.so."):
            return Path(file.locate()).parent
    return None


def find_nvcc(log: Log | None = None) -> Path:
    """The nvcc cuda_toolchain() picks."""
    return cuda_toolchain(log).nvcc


def cuda_toolchain(log: Log | None = None) -> CudaToolchain:
    """nvcc with its headers and libcudart: $SLAB_EDGE_NVCC, else the CUDA wheels for cuda_major_minor()
    (fetched once), else nvcc on PATH or in /usr/local/cuda/bin.

    Raises:
        BackendError: none of them is usable.
    """
    if os.environ.get(NVCC_ENV):
        nvcc = Path(os.environ[NVCC_ENV])
        if not nvcc.is_file():
            raise InputError(f"${NVCC_ENV}={nvcc} is not a file")
        return _local_toolkit(nvcc)
    wanted = cuda_major_minor()
    wheel_error = None
    if wanted.split(".")[0] == "13":
        try:
            return _wheel_nvcc(wanted, log)
        except BackendError as err:  # offline, or no wheel for this machine: try a local CUDA
            wheel_error = err
    else:
        wheel_error = f"no nvcc wheel layout known for CUDA {wanted} (wheels exist for CUDA 13)"
    for candidate in (shutil.which("nvcc"), "/usr/local/cuda/bin/nvcc"):
        if candidate and Path(candidate).is_file():
            if log:
                log(f"nvcc wheel not used ({wheel_error}); using {candidate}")
            return _local_toolkit(Path(candidate))
    raise BackendError(f"no nvcc: {wheel_error}; install the CUDA toolkit or set ${NVCC_ENV}")


def _local_toolkit(nvcc: Path) -> CudaToolchain:
    """A CUDA toolkit on the machine (JetPack, /usr/local/cuda): its headers and libcudart beside nvcc."""
    home = nvcc.resolve().parent.parent
    include = home / "include"
    if (
        not (include / "cuda_runtime.h").is_file()
        and (Path("/usr/local/cuda/include") / "cuda_runtime.h").is_file()
    ):
        home, include = Path("/usr/local/cuda"), Path("/usr/local/cuda/include")  # nvcc linked outside it
    folders = [home / d for d in ("lib64", "lib")] + sorted(home.glob("targets/*/lib"))
    lib = next((d for d in folders if any(d.glob("libcudart.so*"))), None)
    version = _nvcc_version(nvcc)
    return CudaToolchain(nvcc=nvcc, include=include if include.is_dir() else None, lib=lib, version=version)


def _nvcc_version(nvcc: str | os.PathLike) -> str:
    result = subprocess.run([str(nvcc), "--version"], capture_output=True, text=True)
    lines = [ln for ln in result.stdout.splitlines() if ln.strip()]
    return lines[-1] if lines else "unknown nvcc"


def host_compiler() -> str:
    cxx = os.environ.get("CXX") or "g++"
    path = shutil.which(cxx)
    if path is None:
        raise BackendError(f"no C++ compiler {cxx!r}: install g++ (apt-get install g++) or set $CXX")
    return path


def local_cuda_archs() -> list[str]:
    """Compute capabilities of the visible GPUs (from nvidia-smi), e.g. ["90"]; [] without a GPU."""
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return []
    result = subprocess.run(
        [smi, "--query-gpu=compute_cap", "--format=csv,noheader"], capture_output=True, text=True
    )
    if result.returncode != 0:
        return []
    archs = {ln.strip().replace(".", "") for ln in result.stdout.splitlines() if ln.strip()}
    return sorted(a for a in archs if a.isdigit())


# -- compile and link ----------------------------------------------------------------------------------------
CXX_FLAGS = ["-O3", "-std=c++17", "-fPIC", "-fvisibility=hidden", "-Wall", "-Wextra", "-fno-math-errno"]
NVCC_FLAGS = ["-O3", "-std=c++17", "--expt-relaxed-constexpr", "-Xcompiler", "-fPIC,-fvisibility=hidden"]


def _run(command: list[str], what: str, log_file: Path | None = None) -> None:
    result = subprocess.run(command, capture_output=True, text=True)
    if log_file is not None:
        with open(log_file, "a", encoding="utf-8") as f:
            f.write("$ " + " ".join(command) + "\n" + result.stdout + result.stderr + "\n")
    if result.returncode != 0:
        output = (result.stderr + result.stdout).splitlines()
        first = next((ln for ln in output if "error" in ln.lower()), output[0] if output else "?")
        where = f" (full log: {log_file})" if log_file is not None else ""
        raise BackendError(f"{what} failed: {first.strip()}{where}")


def exported_symbols(library: str | os.PathLike) -> set[str]:
    """Names of the functions and objects a shared library exports (`nm -D --defined-only`)."""
    nm = shutil.which("nm")
    if nm is None:
        raise BackendError("nm (binutils) not found: it comes with gcc (apt-get install binutils)")
    result = subprocess.run([nm, "-D", "--defined-only", str(library)], capture_output=True, text=True)
    if result.returncode != 0:
        raise BackendError(f"nm cannot read {library}: {result.stderr.strip()[:200]}")
    return {parts[-1] for parts in (ln.split() for ln in result.stdout.splitlines()) if len(parts) >= 2}


def _build_key(parts: list[str], files: list[Path]) -> str:
    digest = hashlib.sha256()
    for part in parts:
        digest.update(part.encode() + b"\0")
    for file in files:
        digest.update(file.name.encode() + b"\0" + file.read_bytes())
    return digest.hexdigest()


def _includes(
    spec: Target, sources: list[str], log: Log | None
) -> tuple[list[str], list[str], CudaToolchain | None]:
    """(-I flags, toolchain description for the build key, the CUDA toolchain or None) of a target built
    from `sources`: CUDA is needed to compile a .cu, and for the TensorRT headers (they include its own)."""
    includes, toolchain = [f"-I{csrc_dir()}"], []
    if spec.ort:
        includes.append(f"-I{ort_include_dir(log)}")
        toolchain.append(f"ort-headers {ORT_HEADERS.version}")
    if spec.trt:
        includes.append(f"-I{tensorrt_include_dir(log)}")
        toolchain.append(f"trt-headers {os.environ.get(TRT_INCLUDE_ENV) or TRT_HEADERS.version}")
    cuda = cuda_toolchain(log) if spec.trt or any(s.endswith(".cu") for s in sources) else None
    if cuda is not None:
        toolchain.append(f"nvcc {cuda.nvcc} {cuda.version}")
        if cuda.include is not None:
            includes.append(f"-I{cuda.include}")
    return includes, toolchain, cuda


def _build_target(
    target: str,
    out_dir: Path,
    cuda_archs: list[str],
    compile_only: bool,
    log: Log | None,
) -> Path:
    spec = TARGET_SOURCES[target]
    src = csrc_dir()
    missing = [s for s in spec.sources if not (src / s).is_file()]
    if missing and (not compile_only or spec.sources[0] in missing):
        raise BackendError(
            f"target {target}: source {', '.join(missing)} is missing from {src} (another part of issue 13 "
            "writes it)"
        )
    sources = [s for s in spec.sources if s not in missing]
    if missing and log:  # compile-only: what calls into them links with those symbols unresolved
        log(f"{target}: {', '.join(missing)} not in the tree: compile-only without it")
    cxx = host_compiler()
    includes, toolchain, cuda = _includes(spec, sources, log)
    if cuda is not None:
        toolchain.append(f"archs {','.join(cuda_archs)}")
    defines = [f"-D{d}" for d in spec.defines]
    gencode = [f"-gencode=arch=compute_{a},code=sm_{a}" for a in cuda_archs]
    if cuda_archs:  # PTX of the newest arch too, so newer GPUs JIT-compile it
        gencode.append(f"-gencode=arch=compute_{cuda_archs[-1]},code=compute_{cuda_archs[-1]}")
    link = [cxx, "-shared", "-Wl,-soname," + LIBRARIES[target]]
    if not compile_only:  # every symbol resolved at link time (compile-only: the CUDA driver's may stay open)
        link.append("-Wl,--no-undefined")
    if spec.version_script and (src / spec.version_script).is_file():
        link.append(f"-Wl,--version-script={src / spec.version_script}")
    libs: list[str] = []
    if cuda is not None and any(s.endswith(".cu") for s in sources):  # the kernel calls the CUDA runtime
        libs += cuda.cudart_link_args()
        rpath = _installed_cudart_lib() or cuda.lib
        if rpath is not None:
            libs.append(f"-Wl,-rpath,{rpath}")
    key = _build_key(
        [
            target,
            cxx,
            _compiler_id(cxx),
            *CXX_FLAGS,
            *NVCC_FLAGS,
            *defines,
            *gencode,
            *link,
            *libs,
            *toolchain,
        ],
        sorted(src.glob("*.h")) + sorted(src.glob("*.map")) + [src / s for s in sources],
    )
    out_dir.mkdir(parents=True, exist_ok=True)
    library = out_dir / LIBRARIES[target]
    key_file = out_dir / f".{LIBRARIES[target]}.key"
    if library.is_file() and key_file.is_file() and key_file.read_text().strip() == key:
        if log:
            log(f"{target}: {library} is up to date")
        return library
    if log:
        log(f"{target}: building {library.name} from {', '.join(sources)}")
    log_file = out_dir / f".{LIBRARIES[target]}.log"
    log_file.write_text("")
    objects = []
    for source in sources:
        if source.endswith(".cu"):  # the same object for every target: the target's defines are host-only
            command = [
                str(cuda.nvcc),
                "-ccbin",
                cxx,
                *NVCC_FLAGS,
                *gencode,
                *includes,
                "-c",
                str(src / source),
            ]
        else:
            command = [cxx, *CXX_FLAGS, *includes, *defines, "-c", str(src / source)]
        objects.append(str(_compile(command, source, [*toolchain, _compiler_id(cxx)], log_file, target)))
    with atomic_path(library) as tmp_library:
        _run([*link, "-o", str(tmp_library), *objects, *libs], f"linking {library.name}", log_file)
        missing_symbols = [s for s in ENTRY_POINTS[target] if s not in exported_symbols(tmp_library)]
        if missing_symbols:
            raise BackendError(f"{library.name} does not export {', '.join(missing_symbols)}")
    key_file.write_text(key + "\n")
    return library


def _compile(command: list[str], source: str, toolchain: list[str], log_file: Path, target: str) -> Path:
    """Run `command -o OBJECT` unless an object of the same command, sources and toolchain is cached
    (toolchain_dir()/objects: targets sharing a source, e.g. sla_attention_cuda.cu, compile it once)."""
    src = csrc_dir()
    key = _build_key([*command, *toolchain], sorted(src.glob("*.h")) + [src / source])
    obj = toolchain_dir() / "objects" / f"{source}.{key[:20]}.o"
    if obj.is_file():
        return obj
    with atomic_path(obj) as tmp:
        _run([*command, "-o", str(tmp)], f"compiling {source} ({target})", log_file)
    return obj


def _compiler_id(cxx: str) -> str:
    result = subprocess.run([cxx, "--version"], capture_output=True, text=True)
    return result.stdout.splitlines()[0] if result.stdout else cxx


def build(
    targets: list[str],
    out_dir: Path | None = None,
    cuda_archs: list[str] | None = None,
    compile_only: bool = False,
    log: Log | None = None,
) -> dict[str, Path]:
    """Build `targets` (TARGETS); returns {target: library path}.

    Args:
        targets: any of "ort", "ort-cuda", "torch-cuda", "trt".
        out_dir: where the libraries go (default: default_build_dir(), where find_library looks; with
            compile_only its "compile-only" subfolder, which find_library never reads).
        cuda_archs: compute capabilities without the dot, e.g. ["87", "90"] (default: the local GPU's,
            else DEFAULT_CUDA_ARCHS).
        compile_only: link against headers alone (unresolved CUDA driver / TensorRT symbols allowed).
        log: callable(str) for progress lines.

    Raises:
        InputError: an unknown target or architecture.
        BackendError: a missing toolchain part or source, a compiler error (first line + log path), or a
            library that does not export its entry points.
    """
    unknown = [t for t in targets if t not in TARGETS]
    if unknown or not targets:
        raise InputError(f"unknown native target {unknown or targets}; choose from {', '.join(TARGETS)}")
    archs = [str(a).replace(".", "") for a in (cuda_archs or local_cuda_archs() or DEFAULT_CUDA_ARCHS)]
    bad = [a for a in archs if not a.isdigit() or len(a) < 2]
    if bad:
        raise InputError(f"CUDA architectures are compute capabilities like 87 or 9.0, got {bad}")
    archs = sorted(set(archs), key=int)
    folder = Path(out_dir) if out_dir else default_build_dir() / ("compile-only" if compile_only else "")
    return {t: _build_target(t, folder, archs, compile_only, log) for t in dict.fromkeys(targets)}


# -- command line -----------------------------------------------------------------------------------------
def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("targets", nargs="+", metavar="TARGET", choices=TARGETS,
                        help=f"libraries to build: {', '.join(TARGETS)}")  # fmt: skip
    from slab_edge.commands.argtypes import output_folder

    parser.add_argument("--out", type=output_folder, help="output folder (default: slab_edge/native/lib)")
    parser.add_argument("--cuda-arch", nargs="+", metavar="CC", help="compute capabilities, e.g. 87 90 "
                        "(default: the local GPU's, else 87 90)")  # fmt: skip
    parser.add_argument("--compile-only", action="store_true", help="compile and link against headers "
                        "alone (no GPU, driver or TensorRT needed); checks the entry points")  # fmt: skip


def run(args: argparse.Namespace) -> int:
    built = build(args.targets, args.out, args.cuda_arch, args.compile_only, log=print)
    for target, path in built.items():
        print(f"{target}: {path}")
    return 0


def main(argv: list[str] | None = None) -> int:
    from slab_edge.errors import SlabEdgeError

    parser = argparse.ArgumentParser(
        prog="python -m slab_edge.native.build", description=__doc__.splitlines()[0]
    )
    add_arguments(parser)
    args = parser.parse_args(argv)
    try:
        return run(args)
    except SlabEdgeError as err:
        print(f"slab_edge.native.build: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
