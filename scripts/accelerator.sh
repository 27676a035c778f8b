#!/bin/sh
# Prints the accelerator this machine has, as `make run` and `make install` read it:
#   gpu  an NVIDIA GPU (nvidia-smi lists one)
#   tpu  a TPU VM (TPU devices under /dev/accel* or /dev/vfio, or the TPU runtime's variables)
#   cpu  neither
if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L 2>/dev/null | grep -q "GPU"; then
  echo gpu
elif ls /dev/accel[0-9]* >/dev/null 2>&1 || ls /dev/vfio/[0-9]* >/dev/null 2>&1 \
     || [ -n "${TPU_ACCELERATOR_TYPE:-}${TPU_NAME:-}${COLAB_TPU_ADDR:-}" ]; then
  echo tpu
else
  echo cpu
fi
