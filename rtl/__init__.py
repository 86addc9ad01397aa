# SPDX-License-Identifier: Apache-2.0
"""SystemVerilog kernels of the datapath and their cocotb testbenches."""
