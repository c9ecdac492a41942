"""jaxnorm.runtime.detect_accelerator: JAX's platform, and an accelerator JAX does not use."""

from types import SimpleNamespace

import jax
import pytest

from jaxnorm.runtime import ACCELERATOR_EXTRAS, detect_accelerator

NOTHING = dict(environ={}, exists=lambda path: False, which=lambda name: None)


def _devices(platform, kind, n=1):
    return [SimpleNamespace(platform=platform, device_kind=kind) for _ in range(n)]


@pytest.mark.parametrize("platform, kind", [("tpu", "TPU v2"), ("gpu", "NVIDIA H200")])
def test_accelerators_are_recognised(platform, kind):
    acc = detect_accelerator(_devices(platform, kind, 8), **NOTHING)
    assert (acc.platform, acc.device_count, acc.device_kind, acc.unused) == (platform, 8, kind, None)
    assert acc.is_accelerator and acc.hint is None
    assert acc.describe() == f"JAX runs on {platform.upper()}: 8 device(s), {kind}"


def test_this_machine_reads_as_jax_reports_it():
    acc = detect_accelerator(**NOTHING)
    assert acc.platform == jax.devices()[0].platform
    assert acc.device_count == len(jax.devices())
    assert acc.is_accelerator == (acc.platform in ("tpu", "gpu"))


@pytest.mark.parametrize("where", [
    dict(environ={"COLAB_TPU_ADDR": "10.0.0.2:8470"}),
    dict(environ={"TPU_NAME": "local"}),
    dict(exists=lambda path: path == "/dev/accel0"),
])
def test_an_unused_tpu_is_reported_with_its_install(where):
    acc = detect_accelerator(_devices("cpu", "cpu"), **{**NOTHING, **where})
    assert acc.unused == "tpu" and not acc.is_accelerator
    assert ACCELERATOR_EXTRAS["tpu"] in acc.hint and "restart" in acc.hint
    assert acc.describe().startswith("JAX runs on CPU: 1 device(s), cpu; this machine has a TPU")


@pytest.mark.parametrize("where", [dict(which=lambda name: "/usr/bin/nvidia-smi" if name == "nvidia-smi" else None),
                                   dict(exists=lambda path: path == "/dev/nvidia0")])
def test_an_unused_gpu_is_reported_with_its_install(where):
    acc = detect_accelerator(_devices("cpu", "cpu"), **{**NOTHING, **where})
    assert acc.unused == "gpu" and "jax[cuda12]" in acc.hint


def test_signs_are_not_read_when_jax_has_the_accelerator():
    acc = detect_accelerator(_devices("gpu", "NVIDIA H200"), environ={"COLAB_TPU_ADDR": "x"}, exists=lambda p: True, which=lambda n: "x")
    assert acc.unused is None


def test_no_devices_is_an_error():
    with pytest.raises(ValueError, match="no devices"):
        detect_accelerator([])
