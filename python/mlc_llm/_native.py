"""Loading the native engine `mlc_llm._core`.

A CUDA build links against the CUDA runtime libraries (cudart, cuBLAS, cuRAND, NVRTC) without bundling
them. Where they come from pip wheels (`nvidia/cu13/lib` in a site-packages, or located by
`cuda.pathfinder`), the dynamic loader would not find them by itself, so they are loaded here first
with RTLD_GLOBAL; afterwards the extension's dependencies resolve by SONAME. Every step is optional:
on a machine without CUDA nothing is found and nothing fails.

The extension itself is imported lazily, on first engine construction, so that the pure-Python parts
of the package (protocol models, errors) work even where the native module is absent.
"""

import ctypes
import importlib
import os
import site
import sys
from types import ModuleType
from typing import List, Optional

_CUDA_LIBS = (
    ("cudart", "libcudart.so.13"),
    ("cublasLt", "libcublasLt.so.13"),
    ("cublas", "libcublas.so.13"),
    ("curand", "libcurand.so.10"),
    ("nvrtc", "libnvrtc.so.13"),
)

_preloaded = False
_core: Optional[ModuleType] = None


def preload_cuda_libs() -> None:
    """Best effort: load the pip-installed CUDA libraries globally if they exist. Never raises."""
    global _preloaded
    if _preloaded or not sys.platform.startswith("linux"):
        return
    _preloaded = True
    if _load_with_pathfinder():
        return
    for directory in _site_cuda_dirs():
        for _, soname in _CUDA_LIBS:
            path = os.path.join(directory, soname)
            if os.path.exists(path):
                try:
                    ctypes.CDLL(path, mode=ctypes.RTLD_GLOBAL)
                except OSError:
                    pass
        return


def _load_with_pathfinder() -> bool:
    try:
        import cuda.pathfinder as pathfinder  # type: ignore[import-not-found]
    except Exception:
        return False
    try:
        for name, _ in _CUDA_LIBS:
            pathfinder.load_nvidia_dynamic_lib(name)
    except Exception:
        return False
    return True


def _site_cuda_dirs() -> List[str]:
    roots: List[str] = []
    try:
        roots.extend(site.getsitepackages())
    except Exception:
        pass
    try:
        roots.append(site.getusersitepackages())
    except Exception:
        pass
    roots.extend(p for p in sys.path if p.endswith("site-packages"))
    dirs = []
    for root in roots:
        directory = os.path.join(root, "nvidia", "cu13", "lib")
        if os.path.isdir(directory) and directory not in dirs:
            dirs.append(directory)
    return dirs


def load_core() -> ModuleType:
    """Imports and returns `mlc_llm._core`, with an actionable message when it was never built."""
    global _core
    if _core is None:
        preload_cuda_libs()
        try:
            _core = importlib.import_module("mlc_llm._core")
        except ImportError as err:
            raise ImportError(
                "the native engine mlc_llm._core is not available; build it with `maturin develop` "
                f"or install the mlc_llm wheel ({err})"
            ) from err
    return _core
