# SPDX-License-Identifier: Apache-2.0
"""Fixtures of the serving and client tests: one small package and a server (gRPC, or with
the REST port too) per module."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="module")
def pkg(tmp_path_factory):
    from serving_helpers import build_package

    return build_package(tmp_path_factory.mktemp("serving"))


@pytest.fixture(scope="module")
def server(pkg):
    from serving_helpers import start_server

    srv = start_server(pkg)
    yield srv
    srv.stop(grace=1.0)


@pytest.fixture(scope="module")
def rest(pkg):
    from serving_helpers import start_server

    srv = start_server(pkg, rest_port=0)
    yield srv
    srv.stop(grace=1.0)
