# SPDX-License-Identifier: Apache-2.0
"""npusim: a compiler, bit-exact simulator and runtime for a Brainwave-class BFP accelerator.

The main entry points are here, each imported on first use so that ``import npusim`` stays
cheap (it loads neither numba nor onnx nor TensorFlow)::

    >>> import npusim
    >>> device = npusim.load_device("brainwave-s10")          # doctest: +SKIP
    >>> program = npusim.compile_model("model.onnx", device)  # doctest: +SKIP
    >>> outputs, stats = npusim.Session(program).run(feeds)   # doctest: +SKIP

The subpackages are the four parts of the design: :mod:`npusim.compiler`,
:mod:`npusim.simulator`, :mod:`npusim.runtime` and :mod:`npusim.rtl`.
"""

from __future__ import annotations

from importlib import metadata
from pathlib import Path

_ROOT = Path(__file__).resolve().parent.parent
if (_ROOT / "pyproject.toml").is_file() and (_ROOT / "compiler" / "__init__.py").is_file():
    # a source checkout: npusim.compiler is the repository's compiler/ folder, as the
    # package-dir of pyproject.toml maps it in an installed copy
    __path__.append(str(_ROOT))

try:
    __version__ = metadata.version("npusim")
except metadata.PackageNotFoundError:  # a source checkout that was never installed
    __version__ = "0+unknown"

from npusim.simulator.lazy import lazy_names  # noqa: E402

_LAZY = {
    "compile_model": "npusim.compiler.driver",
    "compile_full": "npusim.compiler.driver",
    "CompileError": "npusim.compiler.errors",
    "UnsupportedOpError": "npusim.compiler.errors",
    "load_device": "npusim.simulator.config",
    "preset_names": "npusim.simulator.config",
    "DeviceConfig": "npusim.simulator.config",
    "Program": "npusim.simulator.program",
    "get_format": "npusim.simulator.numerics",
    "Session": "npusim.runtime.session",
    "Device": "npusim.runtime.device",
    "DevicePool": "npusim.runtime.device",
    "ModelDefinition": "npusim.runtime.serving.pipeline",
    "PredictionClient": "npusim.runtime.serving.client",
    "load_package": "npusim.runtime.serving.package",
    "save_package": "npusim.runtime.serving.package",
}

__all__ = ["__version__", *_LAZY]

__getattr__, __dir__ = lazy_names(globals(), _LAZY)
