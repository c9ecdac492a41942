"""Which accelerator JAX runs on, and whether the machine has one JAX does not use.

The notebooks (and anyone choosing a study's size) ask one question: is there a GPU or a
TPU to train on? ``jax.devices()[0].platform`` answers it for JAX -- ``'tpu'``, ``'gpu'``
or ``'cpu'`` -- but a runtime can have an accelerator attached that JAX does not see
(Colab's TPU runtime with a CPU-only jaxlib, a GPU machine with ``pip install jax``
instead of ``jax[cuda12]``), and then everything silently runs on the CPU.
:func:`detect_accelerator` reports both, with the install that fixes the mismatch.

Signs of an attached accelerator (read only when JAX runs on the CPU):

* TPU: the environment variables ``COLAB_TPU_ADDR`` (Colab's TPU runtime), ``TPU_NAME``
  or ``TPU_ACCELERATOR_TYPE`` (Cloud TPU VMs), or a device file ``/dev/accel0`` or
  ``/dev/vfio/0``;
* GPU: ``nvidia-smi`` on the ``PATH`` or a device file ``/dev/nvidia0``.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
from typing import Callable, Mapping, Optional, Sequence

#: Platforms JAX reports, and the extra of ``jax`` that brings each one's backend.
ACCELERATOR_EXTRAS = {"tpu": "jax[tpu]", "gpu": "jax[cuda12]"}
_TPU_ENV = ("COLAB_TPU_ADDR", "TPU_NAME", "TPU_ACCELERATOR_TYPE")
_TPU_FILES = ("/dev/accel0", "/dev/vfio/0")
_GPU_FILES = ("/dev/nvidia0",)


@dataclasses.dataclass(frozen=True)
class Accelerator:
    """What :func:`detect_accelerator` found.

    Attributes:
      platform: the platform of JAX's first device: ``'tpu'``, ``'gpu'`` or ``'cpu'``
        (another backend's name as JAX spells it).
      device_count: how many devices JAX sees (all processes).
      device_kind: the first device's ``device_kind`` (e.g. ``'TPU v2'``, ``'NVIDIA H100'``).
      unused: an accelerator the machine has but JAX does not use (``'tpu'`` or
        ``'gpu'``; only looked for when ``platform == 'cpu'``), else None.
    """

    platform: str
    device_count: int
    device_kind: str
    unused: Optional[str] = None

    @property
    def is_accelerator(self) -> bool:
        """True when JAX trains on a TPU or a GPU."""
        return self.platform in ACCELERATOR_EXTRAS

    @property
    def hint(self) -> Optional[str]:
        """How to make JAX use the unused accelerator, or None."""
        if self.unused is None:
            return None
        return (f"this machine has a {self.unused.upper()} but JAX runs on the CPU: install JAX's "
                f"{self.unused.upper()} backend (pip install -U '{ACCELERATOR_EXTRAS[self.unused]}') and restart the runtime.")

    def describe(self) -> str:
        """One line for a notebook or a log, with the hint when there is one."""
        line = f"JAX runs on {self.platform.upper()}: {self.device_count} device(s), {self.device_kind}"
        return line + (f"; {self.hint}" if self.hint else "")


def detect_accelerator(
    devices: Optional[Sequence] = None,
    *,
    environ: Optional[Mapping[str, str]] = None,
    exists: Callable[[str], bool] = os.path.exists,
    which: Callable[[str], Optional[str]] = shutil.which,
) -> Accelerator:
    """The accelerator JAX runs on (``devices``: default ``jax.devices()``), and, when that
    is the CPU, a TPU or GPU the machine has anyway (module docstring). ``environ``,
    ``exists`` and ``which`` are the environment, file test and ``PATH`` lookup (for
    tests). ValueError if ``devices`` is empty."""
    if devices is None:
        import jax

        devices = jax.devices()
    devices = list(devices)
    if not devices:
        raise ValueError("detect_accelerator: no devices given.")
    first = devices[0]
    platform = str(first.platform).lower()
    kind = str(getattr(first, "device_kind", platform))
    unused = None
    if platform == "cpu":
        env = os.environ if environ is None else environ
        if any(env.get(k) for k in _TPU_ENV) or any(exists(p) for p in _TPU_FILES):
            unused = "tpu"
        elif which("nvidia-smi") or any(exists(p) for p in _GPU_FILES):
            unused = "gpu"
    return Accelerator(platform, len(devices), kind, unused)
