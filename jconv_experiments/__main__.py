"""Entry point (Flax-examples convention), deliberately thin.

    python -m jconv_experiments --config=configs/default.py --workdir=runs/default [--config.batch=4 ...]
    python -m jconv_experiments report --workdir=runs/default   # rebuild report.md + plots only

The config file's ``experiment`` field names a module ``jconv_experiments.<name>`` whose
``run(config, workdir)`` does the work. The config is locked: an unknown ``--config.field``
fails.
"""

from __future__ import annotations

import importlib
import importlib.util

from absl import app, flags
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Path to a config file in configs/ (get_config() -> ConfigDict).", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for results, report and plots.")


def main(argv):
    command = argv[1:]
    if command not in ([], ["run"], ["report"]):
        raise app.UsageError(f"experiments: unknown command {' '.join(command)!r}; use 'report' or nothing")
    if not _WORKDIR.value:
        raise app.UsageError("experiments: --workdir is required")
    if command == ["report"]:
        from jconv_experiments import report  # (jax, flax, matplotlib: not for a bad flag's error)

        try:
            print(f"report: {report.build_report(_WORKDIR.value)}")
        except FileNotFoundError as e:
            raise app.UsageError(str(e)) from None
        return
    config = _CONFIG.value
    if config is None:
        raise app.UsageError("experiments: --config=configs/<name>.py is required")
    name = config.experiment
    if not name.isidentifier() or importlib.util.find_spec(f"jconv_experiments.{name}") is None:
        raise app.UsageError(f"experiments: config.experiment (={name!r}) names no module jconv_experiments/{name}.py")
    importlib.import_module(f"jconv_experiments.{name}").run(config, _WORKDIR.value)


if __name__ == "__main__":
    app.run(main)
