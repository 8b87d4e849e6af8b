"""The MindSpore context: which device, which execution mode, and a clear error when the device
is not there (instead of MindSpore's C++ trace). Training, evaluation, inference and export all
start here.
"""
from __future__ import annotations

import logging

import mindspore as ms


class DeviceUnavailable(RuntimeError):
    """--device_target names a device this MindSpore installation cannot use."""


DEVICE_REQUIREMENTS = {
    "GPU": ("no usable GPU was found. MindSpore {version}'s GPU build needs an NVIDIA GPU with its driver "
            "(libcuda.so), CUDA 11.1 or 11.6 and cuDNN 8 on the library path, and the MindSpore GPU "
            "package (not the CPU-only one)"),
    "Ascend": ("no usable Ascend NPU was found. MindSpore {version} on Ascend needs the Ascend driver and the "
               "CANN toolkit that matches this MindSpore version (its set_env.sh sourced), and the MindSpore "
               "Ascend package"),
}


def check_device(device_target: str) -> None:
    """Raise DeviceUnavailable, saying what is missing, before MindSpore fails with a C++ trace."""
    if device_target == "CPU":
        return
    if device_target not in DEVICE_REQUIREMENTS:
        raise DeviceUnavailable(f"unknown device_target {device_target!r} (CPU, GPU or Ascend)")
    try:
        usable = bool(ms.hal.is_available(device_target))
    except Exception:  # the query itself fails when the device plugin cannot load
        usable = False
    if not usable:
        raise DeviceUnavailable(
            f"--device_target {device_target}: " + DEVICE_REQUIREMENTS[device_target].format(version=ms.__version__)
            + ". Check the installation with: python -c \"import mindspore; mindspore.run_check()\"; "
            "or run with --device_target CPU.")


def set_context(device_target: str, mode: str, deterministic: bool = False) -> None:
    check_device(device_target)
    ms.set_context(mode=ms.GRAPH_MODE if mode == "graph" else ms.PYNATIVE_MODE, device_target=device_target)
    if deterministic and device_target != "CPU":
        # CPU kernels are deterministic already; GPU/Ascend need the deterministic algorithms
        ms.set_context(deterministic="ON")


_launch_group_set = None      # what this process passed to ms.runtime.set_kernel_launch_group (once only)


def set_kernel_launch_group(setting, device_target: str = "CPU") -> None:
    """`train.kernel_launch_group`: None (MindSpore's default, operators launched one by one) or
    [threads, groups], passed to ms.runtime.set_kernel_launch_group before the first graph runs,
    on CPU only (where it was measured; elsewhere MindSpore's default launch stays, with a log
    line). MindSpore takes it once per process: the same setting again is a no-op, another one
    raises RuntimeError. Raises ValueError for anything but None or [threads, groups] with
    `groups` a multiple of `threads`, on any device."""
    global _launch_group_set
    if setting is None:
        return
    valid = (isinstance(setting, (list, tuple)) and len(setting) == 2
             and all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in setting)
             and setting[1] % setting[0] == 0)
    if not valid:
        raise ValueError("train.kernel_launch_group must be null or [threads, groups], positive integers with "
                         f"groups a multiple of threads, got {setting!r}")
    setting = (int(setting[0]), int(setting[1]))
    if device_target != "CPU":
        logging.getLogger("src.device").info("train.kernel_launch_group applies on CPU only; MindSpore's default "
                                             "launch on %s", device_target)
        return
    if _launch_group_set is not None:
        if _launch_group_set != setting:
            raise RuntimeError(f"train.kernel_launch_group {list(setting)}: this process launches with "
                               f"{list(_launch_group_set)} already (MindSpore takes it once per process)")
        return
    ms.runtime.set_kernel_launch_group(thread_num=setting[0], kernel_group_num=setting[1])
    _launch_group_set = setting
