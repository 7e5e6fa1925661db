"""No request body, however malformed, gets a 500: hypothesis throws random JSON shapes at /infer.

Bodies are drawn from arbitrary JSON values and from request-shaped objects whose fields are arbitrary JSON
(the shapes a confused client produces), optionally with Triton's binary extension header and a random binary
tail. Every answer must be a 2xx or a 4xx with an ``error`` message, and the server must count no 5xx.
"""
from __future__ import annotations

import http.client
import json

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gee_deploy.serving.runtimes import OrtRuntime
from gee_deploy.serving.server import InferenceServer, ServeConfig
from gee_deploy.spec import INPUT_NAME, LOGITS, OUTPUT_NAMES

EXAMPLES = 2000  # the issue asks for >= 2,000; about 25 s on 2 shared cores

scalars = (st.none() | st.booleans() | st.integers() | st.integers(min_value=-(10 ** 30), max_value=10 ** 30)
           | st.floats() | st.text(max_size=12))
json_values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=4)
                           | st.dictionaries(st.text(max_size=8), inner, max_size=4), max_leaves=12)
zeros = [0.0] * 784
tensor = st.fixed_dictionaries(
    {"name": st.sampled_from([INPUT_NAME, "x"]) | json_values,
     "shape": st.sampled_from([[1, 1, 28, 28], [2, 1, 28, 28], [1, 784]]) | st.lists(st.integers(-2, 30), max_size=5)
     | json_values,
     "datatype": st.sampled_from(["FP32", "FP16", "INT64", "BYTES"]) | json_values},
    optional={"data": st.just(zeros) | st.just([[zeros]]) | st.lists(st.floats(), max_size=8) | json_values,
              "parameters": st.dictionaries(st.sampled_from(["binary_data_size", "binary_data", "classification",
                                                             "shared_memory_region", "other"]), json_values,
                                            max_size=3) | json_values})
output = st.fixed_dictionaries(
    {"name": st.sampled_from(OUTPUT_NAMES) | json_values},
    optional={"parameters": st.dictionaries(st.sampled_from(["binary_data", "classification", "other"]),
                                            json_values, max_size=3) | json_values})
request = st.fixed_dictionaries(
    {"inputs": st.lists(tensor, max_size=2) | json_values},
    optional={"id": json_values, "outputs": st.lists(output, max_size=3) | json_values,
              "parameters": st.dictionaries(st.sampled_from(["binary_data_output", "sequence_id", "priority"]),
                                            json_values, max_size=2) | json_values})
bodies = st.tuples(json_values | request, st.none() | st.integers(-5, 5000), st.binary(max_size=64))


@pytest.fixture(scope="module")
def fuzz_server(serving_onnx):
    runtime = OrtRuntime(serving_onnx, threads=1)
    with InferenceServer(runtime, ServeConfig(name="tiny", port=0, max_batch=16, max_delay_ms=0, drain_s=2)) as srv:
        yield srv


class _Client:
    """One keep-alive connection, reopened when the server closes it."""

    def __init__(self, port: int):
        self.port, self.conn = port, None

    def post(self, body: bytes, headers: dict) -> tuple[int, bytes]:
        if self.conn is None:
            self.conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        try:
            self.conn.request("POST", "/v2/models/tiny/infer", body, headers)
            resp = self.conn.getresponse()
            return resp.status, resp.read()
        except (OSError, http.client.HTTPException):
            self.conn.close()
            self.conn = None
            raise


def test_random_json_bodies_never_get_a_5xx(fuzz_server):
    client = _Client(fuzz_server.port)
    seen = set()

    @settings(max_examples=EXAMPLES, deadline=None, derandomize=True, database=None,
              suppress_health_check=list(HealthCheck))
    @given(bodies)
    def check(case):
        obj, header_length, tail = case
        head = json.dumps(obj).encode()
        headers = {"Content-Type": "application/json"}
        body = head
        if header_length is not None:
            headers["Inference-Header-Content-Length"] = str(header_length)
            body = head + tail
        status, data = client.post(body, headers)
        seen.add(status)
        assert status == 200 or 400 <= status < 500, (status, data[:300], body[:300])
        if status != 200:
            assert json.loads(data)["error"]

    check()
    assert 400 in seen
    text = fuzz_server.service.metrics.render().decode()
    assert 'code="5' not in text


def test_a_valid_request_still_answers_after_the_fuzz(fuzz_server):
    client = _Client(fuzz_server.port)
    body = json.dumps({"inputs": [{"name": INPUT_NAME, "shape": [1, 1, 28, 28], "datatype": "FP32",
                                   "data": np.zeros(784).tolist()}], "outputs": [{"name": LOGITS}]}).encode()
    status, data = client.post(body, {"Content-Type": "application/json"})
    assert status == 200 and json.loads(data)["outputs"][0]["shape"] == [1, 10]
