"""Print the build inputs of jconv_onednn, one per line, for CMake.

Line 1: the directory holding XLA's FFI headers (``xla/ffi/api/ffi.h``).
Line 2: the oneDNN include directory (``oneapi/dnnl/dnnl.hpp``).
Line 3: the full path of the oneDNN shared library (``libdnnl.so.3``).

The packages are located through their installed metadata, which works in
pip's isolated build environment (installed with --prefix), in venvs and in
--user installs alike.  Environment overrides, for a oneDNN built from
source or unpacked elsewhere: JCONV_ONEDNN_ROOT (a prefix with include/ and
lib/), or JCONV_ONEDNN_INCLUDE and JCONV_ONEDNN_LIB (the library file).
"""

import importlib.metadata
import importlib.util
import os
import sys


def _dist_file(dist_name, suffix):
    try:
        dist = importlib.metadata.distribution(dist_name)
    except importlib.metadata.PackageNotFoundError:
        return None
    # RECORD paths of "data" files are relative to site-packages (for example
    # ../../libdnnl.so.3), so compare the normalized absolute path.
    for f in dist.files or ():
        path = os.path.normpath(str(dist.locate_file(f)))
        if path.replace(os.sep, "/").endswith("/" + suffix) and os.path.exists(path):
            return path
    return None


def ffi_include():
    spec = importlib.util.find_spec("jaxlib")
    if spec is None or not spec.submodule_search_locations:
        sys.exit("locate_deps: jaxlib is not installed (needed for the XLA FFI headers)")
    for loc in spec.submodule_search_locations:
        inc = os.path.join(loc, "include")
        if os.path.exists(os.path.join(inc, "xla", "ffi", "api", "ffi.h")):
            return inc
    sys.exit("locate_deps: jaxlib has no include/xla/ffi/api/ffi.h")


def onednn():
    root = os.environ.get("JCONV_ONEDNN_ROOT")
    inc = os.environ.get("JCONV_ONEDNN_INCLUDE")
    lib = os.environ.get("JCONV_ONEDNN_LIB")
    if root:
        inc = inc or os.path.join(root, "include")
        lib = lib or os.path.join(root, "lib", "libdnnl.so.3")
    if not inc:
        hdr = _dist_file("onednn-devel-cpu-gomp", "include/oneapi/dnnl/dnnl.hpp")
        if hdr:
            inc = os.path.dirname(os.path.dirname(os.path.dirname(hdr)))
    if not lib:
        lib = _dist_file("onednn-cpu-gomp", "lib/libdnnl.so.3")
    if not inc or not os.path.exists(os.path.join(inc, "oneapi", "dnnl", "dnnl.hpp")):
        sys.exit("locate_deps: oneDNN headers not found (install onednn-devel-cpu-gomp "
                 "or set JCONV_ONEDNN_ROOT)")
    if not lib or not os.path.exists(lib):
        sys.exit("locate_deps: libdnnl.so.3 not found (install onednn-cpu-gomp "
                 "or set JCONV_ONEDNN_ROOT)")
    return inc, lib


if __name__ == "__main__":
    inc, lib = onednn()
    print(ffi_include())
    print(inc)
    print(lib)
