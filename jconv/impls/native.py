"""Optional native backends, each from its own plugin package (see plugins/).

``impl="onednn"``: oneDNN's CPU convolutions through XLA's FFI, from the ``jconv-onednn``
package. When the plugin is not installed, or cannot load on this machine, the backend is
registered as unavailable with the reason, and ``impl="onednn"`` says how to install it.
"""

from __future__ import annotations

from jconv.impls import registry

INSTALL_HINT = "pip install ./plugins/onednn (from a jconv checkout; `make install` builds it)"

try:
    import jconv_onednn  # noqa: F401
except ImportError as e:  # not installed: absent, with the reason
    registry.register_unavailable("onednn", f"the jconv-onednn plugin is not installed ({e}); {INSTALL_HINT}")
