# SPDX-License-Identifier: Apache-2.0
"""What users run to measure: latency benchmarks (:mod:`.bench`), per-layer error of a
format (:mod:`.compare`), design-space sweeps (:mod:`.sweep`, :mod:`.points`) and their
charts (:mod:`.plots`), accuracy over datasets (:mod:`.evaluate`, :mod:`.datasets`,
:mod:`.evalworker`), the RTL suite (:mod:`.verify`), with onnxruntime as the reference
(:mod:`.reference`) and work spread over processes or Ray (:mod:`.parallel`).
"""
