# SPDX-License-Identifier: Apache-2.0
"""Device presets (TOML data files)."""
