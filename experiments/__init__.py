"""Experiments: ``python -m experiments --config=configs/<name>.py --workdir=DIR``.

A config's ``experiment`` field names a module here (``compare``, ``train_mnist``) exposing
``run(config, workdir) -> None``. ``python -m experiments report --workdir=DIR`` rebuilds the
comparison report from ``DIR/results.jsonl``. See docs/experiments.md.
"""
