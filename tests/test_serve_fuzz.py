"""Schemathesis fuzzes the running service from its own OpenAPI schema: every answer keeps to
the schema, and no input gets a 500.

Driven through Hypothesis directly: schemathesis's pytest plugin does not run under pytest 9.
"""
from __future__ import annotations

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings

from schemathesis.checks import positive_data_acceptance

from resnetlab.serve.process import ServiceProcess

pytestmark = pytest.mark.xdist_group("serve_fuzz")  # the module's service starts on one worker only

EXAMPLES_PER_OPERATION = 60
OPERATIONS = [("/predict", "POST"), ("/embed", "POST"), ("/health", "GET"), ("/metadata", "GET"), ("/metrics", "GET")]


@pytest.fixture(scope="module")
def api_schema(cifar_classifier):
    with ServiceProcess(cifar_classifier, "--threads", "1", "--max-body-mb", "1") as service:
        yield schemathesis.openapi.from_url(f"{service.url}/openapi.json")


def test_the_schema_lists_every_operation(api_schema):
    listed = {(operation.ok().path, operation.ok().method.upper()) for operation in api_schema.get_all_operations()}
    assert listed == set(OPERATIONS)


@pytest.mark.parametrize("path, method", OPERATIONS, ids=[f"{m} {p}" for p, m in OPERATIONS])
def test_no_generated_request_gets_a_server_error(api_schema, path, method):
    statuses = []

    @given(case=api_schema[path][method].as_strategy())
    @settings(max_examples=EXAMPLES_PER_OPERATION, deadline=None, database=None,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
    def fuzz(case):
        # A schema cannot say "the bytes of an image": random binary is schema-valid, and rightly
        # refused (415), so the check that schema-valid data is accepted does not apply.
        statuses.append(case.call_and_validate(excluded_checks=[positive_data_acceptance]).status_code)

    fuzz()
    assert statuses and max(statuses) < 500
