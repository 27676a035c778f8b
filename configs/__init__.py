"""Experiment configs: Python files returning an ``ml_collections.ConfigDict`` from
``get_config()``, loaded by ``python -m jconv_experiments --config=configs/<name>.py`` from the
repository root. A package of the checkout, not installed (a top-level ``configs`` would collide
with other projects' in a user's environment): configs import each other as ``configs.<name>``."""
