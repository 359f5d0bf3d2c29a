"""The number format a run computes in, and what ``auto`` picks on this machine.

Narrow formats run the networks' arithmetic in 16 bits while the weights, the logits, the softmax
and the losses stay float32 (Keras' mixed-precision policies). They only pay where the hardware
has native units for them; elsewhere they are slower than float32, so ``auto`` looks first:

- a GPU: bfloat16 if every visible GPU has bf16 tensor cores (compute capability 8.0, Ampere, or
  newer), else float16, with loss scaling so that small gradients do not underflow;
- no GPU: bfloat16 if the CPU reports AVX512_BF16 or AMX_BF16, else float32.

A run resolves ``auto`` on the machine that trains it, and records the concrete format: that is
what its parameters, run key and results-table setup say, so runs at different formats are never
reused for one another or averaged together.
"""

import functools
import sys
from pathlib import Path

PRECISIONS = ("auto", "float32", "bfloat16", "float16")
# The Keras dtype policy of each concrete format: "mixed" keeps the variables float32.
POLICIES = {"float32": "float32", "bfloat16": "mixed_bfloat16", "float16": "mixed_float16"}
BF16_CPU_FLAGS = frozenset({"avx512_bf16", "amx_bf16"})
BF16_GPU_CAPABILITY = (8, 0)  # NVIDIA Ampere: the first GPUs with bf16 tensor cores.


def choose(requested: str, cpu_flags: frozenset, gpu_capabilities: list[tuple[int, int]]) -> str:
    """The concrete format for ``requested`` on a machine with these CPU flags and GPUs."""
    if requested != "auto":
        return requested
    if gpu_capabilities:  # The GPUs do the arithmetic; all of them must have bf16 for a trial to use it.
        return "bfloat16" if min(gpu_capabilities) >= BF16_GPU_CAPABILITY else "float16"
    return "bfloat16" if cpu_flags & BF16_CPU_FLAGS else "float32"


def cpu_flags(cpuinfo: Path = Path("/proc/cpuinfo")) -> frozenset:
    """The CPU's feature flags as Linux reports them; none elsewhere, which picks float32."""
    try:
        lines = cpuinfo.read_text().splitlines()
    except OSError:
        return frozenset()
    for line in lines:
        name, _, value = line.partition(":")
        if name.strip() == "flags":
            return frozenset(value.split())
    return frozenset()


def sees_gpu_drivers(devices: Path = Path("/dev")) -> bool:
    """Whether TensorFlow could see a GPU here: on Linux only through a GPU driver's device files
    (NVIDIA's, or AMD's for ROCm builds); elsewhere, TensorFlow must be asked."""
    return not sys.platform.startswith("linux") or any(devices.glob("nvidia[0-9]*")) or (devices / "kfd").exists()


def gpu_capabilities() -> list[tuple[int, int]]:
    """The compute capability of each GPU TensorFlow sees ((0, 0) where it does not say).

    Without a GPU driver there is none to see: a process that trains nothing (a sweep's driver)
    then resolves ``auto`` without importing TensorFlow, 3 to 4 s on two cores.
    """
    if "tensorflow" not in sys.modules and not sees_gpu_drivers():
        return []
    import tensorflow as tf

    return [
        tuple(tf.config.experimental.get_device_details(gpu).get("compute_capability", (0, 0)))
        for gpu in tf.config.list_physical_devices("GPU")
    ]


@functools.cache
def resolve(requested: str) -> str:
    """``requested`` with ``auto`` replaced by this machine's choice (looked up once per process)."""
    if requested != "auto":
        return requested
    return choose(requested, cpu_flags(), gpu_capabilities())
