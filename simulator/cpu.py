# SPDX-License-Identifier: Apache-2.0
"""What the CPU the kernels are compiled for can do: the fast kernels that emit an
instruction set's intrinsics (:mod:`npusim.simulator._vnni`, :mod:`npusim.simulator._fma`)
compile only where LLVM can lower them."""

from __future__ import annotations

import numba


def host_has(*needed: str) -> bool:
    """Whether numba compiles for a CPU with every one of the LLVM features ``needed``
    (the host's, unless ``NUMBA_CPU_NAME`` names another CPU, when its
    ``NUMBA_CPU_FEATURES`` decide)."""
    cpu = numba.config.CPU_NAME
    if cpu and cpu != "host":
        given = set((numba.config.CPU_FEATURES or "").split(","))
        return all(f"+{f}" in given for f in needed)
    try:
        import llvmlite.binding as ll
        features = ll.get_host_cpu_features()
    except Exception:  # noqa: BLE001 - any failure to read them means: don't use it
        return False
    return all(features.get(f, False) for f in needed)


AVX512 = host_has("avx512f")
"""Whether 512-bit vectors of float32 may be compiled here."""
