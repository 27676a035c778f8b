"""What every report shares: formatting, the order and colours of implementations, plots' files."""

from __future__ import annotations

import os

from jconv.impls import registry
from jconv_experiments.bench.peers import BASELINE, PEERS
from jconv_experiments.bench.store import as_float


def impl_order(impls) -> list[str]:
    """The baseline first, then ``auto``, the registered backends (each with its algorithms) in
    registration order, then the other peers; anything else last, sorted."""
    impls = set(impls)
    order = [BASELINE, "auto"]
    for name in registry.names():
        order.append(name)
        order += [f"{name}:{a}" for a in registry.get(name).algorithms]
    order += list(PEERS)
    known = [i for i in dict.fromkeys(order) if i in impls]
    return known + sorted(impls - set(known))


# fixed colours for the impls every report has; others cycle through a palette
_COLORS = {"xla": "#4c72b0", "lax": "#dd8452", "auto": "#55a868", "pallas": "#c44e52", "onednn": "#937860",
           "torch": "#8172b3", "gemm_peak": "#7f7f7f"}
_MARKERS = {"xla": "o", "lax": "s", "auto": "^", "pallas": "D", "onednn": "P", "torch": "v", "gemm_peak": "x"}


def color(impl: str, i: int = 0):
    import matplotlib

    return _COLORS.get(impl, matplotlib.colormaps["tab10"](i % 10))


def marker(impl: str) -> str:
    return _MARKERS.get(impl, "o")


def fmt_err(v) -> str:
    v = as_float(v)
    if v is None:
        return "-"
    if v == 0:
        return "0"
    return f"{v:.1e}"


def fmt_ms(v) -> str:
    v = as_float(v)
    return "-" if v is None else (f"{v * 1e3:.3g}" if v * 1e3 < 100 else f"{v * 1e3:.0f}")


def fmt_bytes(v) -> str:
    if v is None:
        return "-"
    v = float(v)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if v < 1024 or unit == "GiB":
            return f"{v:.0f} {unit}" if unit == "B" else f"{v:.1f} {unit}"
        v /= 1024
    return str(v)


def table(header: list[str], lines: list[list]) -> str:
    out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    out += ["| " + " | ".join(str(c).replace("|", "/") for c in line) + " |" for line in lines]
    return "\n".join(out)


def save(fig, path: str) -> None:
    """Save a figure atomically (temp file + rename) and close it."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    tmp = path + ".tmp.png"
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    os.replace(tmp, path)


def machine_line(env: dict) -> str:
    return (f"**Machine**: {env.get('device_kind')} ({env.get('platform')}), {env.get('device_count')} device(s); "
            f"host CPU {env.get('cpu_model')}, {env.get('cpu_count')} cores"
            + (f" ({', '.join(env['cpu_isa'])})" if env.get("cpu_isa") else "") + ". "
            f"jax {env.get('jax')}, jaxlib {env.get('jaxlib')}, flax {env.get('flax')}, "
            f"torch {env.get('torch') or 'not installed'}; commit {env.get('commit')}; {env.get('time_utc')}.")
