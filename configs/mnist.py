"""The seed's MNIST CNN on real MNIST (60,000 train / 10,000 test).

    python -m jconv_experiments --config=configs/mnist.py --workdir=runs/mnist \
        [--config.data_dir=/path/with/idx/files]

Reads train-images-idx3-ubyte.gz, train-labels-idx1-ubyte.gz, t10k-images-idx3-ubyte.gz and
t10k-labels-idx1-ubyte.gz from ``data_dir`` when they are there; otherwise from the cache
(``$JCONV_DATA_DIR/mnist`` or ``~/.cache/jconv/mnist``), downloading them once from a mirror and
checking their SHA-256 (works on Colab). Without network and files it stops with a message
naming the directory to put the files in. Adam 1e-3, batch 128, 12 epochs, dropout 0.5, the
Keras example's recipe; the target is >= 99% test accuracy.

NOT RUN HERE: the development machine has no network and no MNIST files, so no accuracy or
time was measured for this config. (Expect roughly a minute per epoch on a 2-core CPU, seconds
on an accelerator.) The same code path is run here on the embedded digits (configs/digits.py)
and by tests/test_data.py on small IDX files.
"""

from configs.digits import get_config as _digits


def get_config():
    c = _digits()
    c.dataset = "mnist"
    c.num_epochs = 12
    c.batch_size = 128
    c.eval_batch_size = 1000
    c.speed_rounds = 20
    return c
