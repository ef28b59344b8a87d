"""Build and load the sparse CPU kernels (C++ extension in ``csrc/``) with torch's JIT extension builder.

Why JIT (``torch.utils.cpp_extension.load``) rather than a setuptools extension: the build then needs
nothing but g++ and ninja on the machine, is cached by a hash of the sources and flags, and is redone by
itself when ``csrc/`` changes. ``python -m latency_models.sparse_kernels.build`` pre-builds it (the Makefile
does this on install) so that the first search does not pay the ~1 minute compile.
"""

from __future__ import annotations

import os
import shutil
import sys
import threading
from pathlib import Path

CSRC = Path(__file__).resolve().parents[2] / "csrc"
SOURCES = ("sparse_conv.cpp", "kernel_avx2.cpp", "kernel_scalar.cpp")
# AVX2/FMA are enabled inside kernel_avx2.cpp only (#pragma GCC target), so the shared object still loads
# and runs its portable path on CPUs without AVX2.
CFLAGS = ["-O3", "-fno-math-errno", "-std=c++17"]
_lock = threading.Lock()
_loaded = False


class BuildError(RuntimeError):
    """The extension could not be compiled or loaded; the message says what to install."""


def build_dir() -> Path:
    """Where the compiled extension is cached: $SPARSE_CPU_BUILD_DIR, else the repo's build/ folder.

    Not under $AUTOML_HOME: tests point that at a fresh temp dir per session, and a rebuild costs a minute.
    Falls back to $AUTOML_HOME/torch_extensions when the source tree is not writable.
    """
    env = os.environ.get("SPARSE_CPU_BUILD_DIR")
    if env:
        return Path(env)
    repo_build = CSRC.parent / "build"
    if os.access(CSRC.parent, os.W_OK):
        return repo_build / "torch_extensions" / "sparse_cpu"
    home = Path(os.environ.get("AUTOML_HOME") or Path.home() / ".cache" / "compress-search")
    return home / "torch_extensions" / "sparse_cpu"


def _check_toolchain() -> None:
    if shutil.which(os.environ.get("CXX", "c++")) is None and shutil.which("g++") is None:
        raise BuildError("sparse_cpu: no C++ compiler found; install one (Debian: "
                         "'sudo apt-get install build-essential'), or run 'make install' as root")
    bin_dir = Path(sys.executable).parent
    if shutil.which("ninja") is None and not (bin_dir / "ninja").exists():
        raise BuildError("sparse_cpu: ninja not found; 'pip install ninja' into the venv or "
                         "'apt-get install ninja-build'")
    if (bin_dir / "ninja").exists() and str(bin_dir) not in os.environ.get("PATH", ""):
        os.environ["PATH"] = f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}"


def load(verbose: bool = False) -> None:
    """Compile (first call only, cached on disk) and load the ops into ``torch.ops.sparse_cpu``.

    Also registers the fake (meta) kernels so the ops trace under torch.compile and torch.export.
    """
    global _loaded
    with _lock:
        if _loaded:
            return
        import torch
        from torch.utils import cpp_extension

        _check_toolchain()
        out = build_dir()
        out.mkdir(parents=True, exist_ok=True)
        try:
            cpp_extension.load(
                name="sparse_cpu_ext",
                sources=[str(CSRC / s) for s in SOURCES],
                extra_cflags=CFLAGS,
                extra_include_paths=[str(CSRC)],
                build_directory=str(out),
                is_python_module=False,
                verbose=verbose,
            )
        except (RuntimeError, OSError, ImportError) as err:  # compiler errors surface as RuntimeError
            raise BuildError(f"sparse_cpu: building the extension in {out} failed: {err}") from err
        from . import fake  # noqa: F401  (registers fake kernels; needs the op schemas loaded above)

        assert hasattr(torch.ops.sparse_cpu, "conv2d")
        _loaded = True


def main() -> int:
    """Pre-build and print where the cache is and which ISA the kernels will use."""
    import torch

    load(verbose="-v" in sys.argv)
    print(f"sparse_cpu built in {build_dir()}; kernels: {torch.ops.sparse_cpu.isa()}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
