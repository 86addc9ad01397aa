# SPDX-License-Identifier: Apache-2.0
"""The Brainwave service flow: pipelines of host TensorFlow stages around device programs
(:mod:`.pipeline`, :mod:`.tfstages`), their packages (:mod:`.package`, :mod:`.manifest`,
:mod:`.signing`), and the TF Serving-compatible server (:mod:`.server`, :mod:`.service`,
:mod:`.gate`, :mod:`.config`; the REST API: :mod:`.rest`, :mod:`.jsontensor`) with its
client (:mod:`.client`, :mod:`.protos`).

Layered bottom-up, with no import circles: pipeline; manifest and signing; package;
tfstages; protos; config, service, gate; jsontensor, rest; server. The client needs
only protos (and no TensorFlow).
"""
