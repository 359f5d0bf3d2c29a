"""The number format: what ``auto`` picks on which hardware, and networks that keep float32 at their edges.

The choice is a pure function of the CPU's flags and the GPUs' compute capabilities, so every
branch, the GPU ones included, is tested here on a machine without a GPU. The same function is
what a run calls (``precision.resolve``) with this machine's flags and GPUs.
"""

import subprocess
import sys

import keras
import numpy as np
import pytest

from kdflow import losses, precision, training, variants
from kdflow.config import Config

SAPPHIRE_RAPIDS = frozenset({"avx512f", "avx512_bf16", "amx_bf16", "amx_tile"})
COOPER_LAKE = frozenset({"avx512f", "avx512_bf16"})
SKYLAKE = frozenset({"avx2", "avx512f"})


@pytest.mark.parametrize(
    "cpu, gpus, chosen",
    [
        (SKYLAKE, [], "float32"),  # no native bf16: bfloat16 would be emulated, slower than float32
        (COOPER_LAKE, [], "bfloat16"),
        (SAPPHIRE_RAPIDS, [], "bfloat16"),
        (frozenset({"amx_bf16"}), [], "bfloat16"),
        (SKYLAKE, [(8, 0)], "bfloat16"),  # A100: the GPU decides, whatever the CPU has
        (SKYLAKE, [(9, 0), (8, 6)], "bfloat16"),
        (SAPPHIRE_RAPIDS, [(7, 0)], "float16"),  # V100: tensor cores for float16 only
        (SAPPHIRE_RAPIDS, [(8, 0), (7, 5)], "float16"),  # one older card decides for the trial
        (SKYLAKE, [(0, 0)], "float16"),  # a GPU that does not say: the safe narrow format
    ],
)
def test_auto_picks_by_hardware(cpu, gpus, chosen):
    assert precision.choose("auto", cpu, gpus) == chosen


@pytest.mark.parametrize("requested", ["float32", "bfloat16", "float16"])
def test_a_format_asked_for_is_kept_on_any_hardware(requested):
    for cpu, gpus in [(SKYLAKE, []), (SAPPHIRE_RAPIDS, []), (SKYLAKE, [(7, 0)]), (SKYLAKE, [(9, 0)])]:
        assert precision.choose(requested, cpu, gpus) == requested


def test_cpu_flags_come_from_cpuinfo(tmp_path):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nmodel name\t: Xeon\nflags\t\t: fpu avx512f avx512_bf16 amx_tile\n\n")
    assert precision.cpu_flags(cpuinfo) == frozenset({"fpu", "avx512f", "avx512_bf16", "amx_tile"})
    assert precision.cpu_flags(tmp_path / "missing") == frozenset()  # not Linux: auto means float32


def test_this_machine_resolves_to_a_concrete_format():
    chosen = precision.resolve("auto")
    assert chosen in precision.POLICIES
    assert chosen == precision.choose("auto", precision.cpu_flags(), precision.gpu_capabilities())
    assert Config().resolved().precision == chosen and Config(precision="float32").resolved().precision == "float32"


@pytest.mark.parametrize("build", [
    lambda fmt: variants.build_network("cnn", "normal", fmt), lambda fmt: variants.build_network("softmax", "normal", fmt),
    lambda fmt: variants.build_network("mlp", "he", fmt),
])
@pytest.mark.parametrize("fmt", ["bfloat16", "float16"])
def test_narrow_networks_compute_narrow_and_keep_float32_weights_and_logits(build, fmt):
    keras.utils.set_random_seed(12)
    network = build(fmt)
    compute_dtypes = {layer.compute_dtype for layer in network.layers[:-1]}
    assert compute_dtypes == {fmt}
    assert {variable.dtype for variable in network.weights} == {"float32"}  # Adam updates float32 weights.
    logits = network(np.random.default_rng(0).random((4, 28, 28), dtype=np.float32), training=False)
    assert logits.dtype == "float32"  # The softmax and the losses never see 16 bits.


def test_float32_networks_have_no_extra_layer():
    """A float32 network is the one kdflow built before precision existed, so its runs repeat exactly."""
    for network in (variants.build_network(name, "he", "float32") for name in ("cnn", "softmax", "mlp")):
        assert {layer.compute_dtype for layer in network.layers} == {"float32"}
        assert not any(isinstance(layer, keras.layers.Activation) for layer in network.layers)


@pytest.mark.slow
def test_float16_training_with_loss_scaling_learns_like_float32(fetched_mnist):
    """float16 is what auto picks on GPUs without bf16; here it runs (slowly) on the CPU, the same code path."""
    splits = fetched_mnist[0]

    def best_validation_accuracy(fmt: str) -> float:
        config = Config(num_steps=60, eval_every=30, precision=fmt, recipe="tuned")

        def objective(student, images, labels):
            return losses.hard_loss(labels, student(images, training=True), 1.0)

        arrays = (splits.train_images, splits.train_labels)
        build = lambda precision: variants.build_network("softmax", "zeros", precision)
        stored, result = training.train(build, objective, arrays, splits, config)
        assert {variable.dtype for variable in stored.weights} == {"float32"}
        assert {layer.compute_dtype for layer in stored.layers} == {"float32"}  # What is stored computes in float32.
        return result.best_validation_accuracy

    # The same batches from the same zero start: float16 arithmetic may cost a little, not the learning.
    assert best_validation_accuracy("float16") == pytest.approx(best_validation_accuracy("float32"), abs=0.02)


def test_auto_on_linux_without_gpu_drivers_needs_no_tensorflow(tmp_path):
    """A sweep's driver resolves "auto" without importing TensorFlow where no GPU driver is."""
    script = ("import sys; from pathlib import Path; from kdflow import precision\n"
              "print(precision.sees_gpu_drivers(Path(sys.argv[1])), precision.gpu_capabilities() if sys.argv[2] == 'ask' else '',"
              " 'tensorflow' in sys.modules)")
    no_drivers, nvidia = tmp_path / "none", tmp_path / "nvidia"
    no_drivers.mkdir()
    nvidia.mkdir()
    (nvidia / "nvidia0").touch()
    run = lambda devices, ask: subprocess.run([sys.executable, "-c", script, str(devices), ask], capture_output=True,
                                              text=True, timeout=300, check=True).stdout.split()
    assert run(no_drivers, "") == ["False", "False"]
    assert run(nvidia, "") == ["True", "False"]
    if not precision.sees_gpu_drivers():  # This machine has none: asking costs no TensorFlow.
        assert run(no_drivers, "ask") == ["False", "[]", "False"]
