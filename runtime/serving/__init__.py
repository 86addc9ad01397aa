# SPDX-License-Identifier: Apache-2.0
"""The Brainwave service flow: pipelines of host TensorFlow stages around device programs
(:mod:`.pipeline`, :mod:`.tfstages`), their packages (:mod:`.package`, :mod:`.manifest`,
:mod:`.signing`), and the TF Serving-compatible server (:mod:`.server`, :mod:`.service`,
:mod:`.gate`, :mod:`.config`) with its client (:mod:`.client`).

Layered bottom-up, with no import circles: pipeline; manifest and signing; package;
tfstages; config, service, gate; server. The client stands alone.
"""
