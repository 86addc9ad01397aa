# SPDX-License-Identifier: Apache-2.0
"""Shared cocotb helpers of the RTL kernels: the build/run wrapper and stream drivers."""
