"""Experiment configs: Python files returning an ``ml_collections.ConfigDict`` from
``get_config()``, loaded by ``python -m experiments --config=configs/<name>.py``."""
