# SPDX-License-Identifier: Apache-2.0
"""npusim's runtime: sessions over the simulated device, the model zoo and the CLI."""

from runtime.session import Session

__all__ = ["Session"]
