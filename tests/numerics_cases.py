# SPDX-License-Identifier: Apache-2.0
"""Formats and awkward inputs shared by the numerics tests."""

from __future__ import annotations

import numpy as np

from npusim.simulator.numerics import Format, get_format

#: Every BFP format, with the ms-fp8/9 exponent shared over several native dimensions.
DIFF_FORMATS = [get_format(n, d) for n in ("msfp8", "msfp9") for d in (8, 16, 128)] + [
    get_format(n) for n in ("msfp12", "msfp16", "mxint8")
]


#: The OCP MX minifloat formats (MXFP8, MXFP6, MXFP4).
MX_FORMATS = [get_format(n) for n in ("mxfp8_e4m3", "mxfp8_e5m2", "mxfp6_e3m2", "mxfp6_e2m3",
                                      "mxfp4_e2m1")]


def fid(fmt: Format) -> str:
    return f"{fmt.name}-b{fmt.block_size}"


def nasty(rng: np.random.Generator, shape: tuple[int, ...], fmt: Format,
          nonfinite: bool = True, row_exp: tuple[int, int] = (-145, 125)) -> np.ndarray:
    """Random values with exact ties, zeros, -0, subnormals, huge values, NaN and Inf."""
    m = fmt.mantissa_bits
    n = int(np.prod(shape))
    normal = rng.standard_normal(n) * 2.0 ** rng.integers(-12, 12, n)
    ties = rng.integers(-(2 ** (m + 2)), 2 ** (m + 2), n) / 2 * 2.0 ** rng.integers(-6, 6, n)
    kind = rng.choice(3, n, p=[0.5, 0.4, 0.1])
    x = np.where(kind == 0, normal, np.where(kind == 1, ties, 0.0))
    # one scale per 32 elements along the last axis: blocks straddle scales at small sizes
    chunks = np.repeat(rng.integers(*row_exp, shape[:-1] + (-(-shape[-1] // 32),)), 32, -1)
    with np.errstate(over="ignore"):  # chunks scaled past fp32 range become +-inf
        x = (x.reshape(shape) * 2.0 ** chunks[..., : shape[-1]]).astype(np.float32).ravel()
    specials = [-0.0, 1e-45, -1e-45, 2.0**-140]
    if nonfinite:
        specials += [3.4e38, -3.4e38, np.nan, np.inf, -np.inf]
    pick = rng.random(n) < 0.01
    x[pick] = rng.choice(np.array(specials, np.float32), int(pick.sum()))
    return x.reshape(shape)
