"""jconv's applications: the experiments, benchmarks, training and the model zoo.

    python -m jconv_experiments --config=configs/<name>.py --workdir=DIR
    python -m jconv_experiments report --workdir=DIR      # rebuild report.md + plots

Apart from the library on purpose: ``import jconv`` loads none of this. A config's
``experiment`` field names a module here (``compare``, ``compile_matrix``, ``train_mnist``)
exposing ``run(config, workdir) -> None``. The measuring harness is :mod:`.bench`, the reports
:mod:`.report`, the named real layers :mod:`.suite`, the seed's MNIST CNN :mod:`.models`,
training :mod:`.train`, data :mod:`.data`. See docs/experiments.md.
"""
