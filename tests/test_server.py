"""The KServe v2 server: a tritonclient round trip, bad requests, dynamic batching, metrics, load."""
from __future__ import annotations

import http.client
import json
import re
import subprocess
import sys
import threading

import numpy as np
import pytest

from gee_deploy.serving.loadtest import load_test
from gee_deploy.data import load_test_arrays
from gee_deploy.serving.runtimes import OrtRuntime
from gee_deploy.serving.server import Batcher, InferenceServer


@pytest.fixture(scope="module")
def images():
    return load_test_arrays("synthetic", limit=64)[0]


@pytest.fixture(scope="module")
def runtime(serving_onnx):
    return OrtRuntime(serving_onnx, threads=1)


@pytest.fixture()
def server(runtime):
    with InferenceServer(runtime, "tiny", port=0, max_batch=16, max_delay_ms=5, max_body_bytes=1 << 20) as srv:
        yield srv


def _post(srv, path: str, body: bytes, headers: dict | None = None) -> tuple[int, dict]:
    conn = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=30)
    try:
        conn.request("POST", path, body, headers or {"Content-Type": "application/json"})
        resp = conn.getresponse()
        data = resp.read()
        return resp.status, json.loads(data) if data else {}
    finally:
        conn.close()


def _get(srv, path: str) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=30)
    try:
        conn.request("GET", path)
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


def _request(x: np.ndarray, datatype: str = "FP32", **extra) -> bytes:
    return json.dumps({"inputs": [{"name": "input", "shape": list(x.shape), "datatype": datatype,
                                   "data": x.ravel().tolist()}], **extra}).encode()


def test_tritonclient_round_trip_equals_onnxruntime(server, runtime, images):
    import tritonclient.http as httpclient

    client = httpclient.InferenceServerClient(server.url)
    assert client.is_server_live() and client.is_server_ready() and client.is_model_ready("tiny")
    meta = client.get_model_metadata("tiny")
    assert meta["inputs"] == [{"name": "input", "datatype": "FP32", "shape": [-1, 1, 28, 28]}]
    assert [o["name"] for o in meta["outputs"]] == ["logits", "spike_counts"]
    x = images[:8]
    want_logits, want_spikes = runtime(x)
    for binary in (True, False):
        inp = httpclient.InferInput("input", list(x.shape), "FP32")
        inp.set_data_from_numpy(x, binary_data=binary)
        outputs = [httpclient.InferRequestedOutput(n, binary_data=binary) for n in ("logits", "spike_counts")]
        result = client.infer("tiny", [inp], outputs=outputs, request_id="r1")
        assert np.array_equal(result.as_numpy("logits"), want_logits)
        assert np.array_equal(result.as_numpy("spike_counts"), want_spikes)
        assert result.get_response()["id"] == "r1"
    result = client.infer("tiny", [inp])  # no outputs named: all of them, binary
    assert np.array_equal(result.as_numpy("logits"), want_logits)
    client.close()


@pytest.mark.parametrize("body, status, message", [
    (b"{not json", 400, "not valid JSON"),
    (b"[]", 400, "exactly one tensor"),
    (_request(np.zeros((1, 1, 28, 27), np.float32)), 400, "shape must be [N, 1, 28, 28]"),
    (_request(np.zeros((1, 1, 28, 28), np.float32), datatype="INT32"), 400, "datatype must be FP32"),
    (_request(np.full((1, 1, 28, 28), np.nan, np.float32)), 400, "NaN or Inf"),
    (_request(np.full((1, 1, 28, 28), np.inf, np.float32)), 400, "NaN or Inf"),
    (json.dumps({"inputs": [{"name": "input", "shape": [1, 1, 28, 28], "datatype": "FP32",
                             "data": [1.0] * 5}]}).encode(), 400, "holds 5 values"),
    (json.dumps({"inputs": [{"name": "input", "shape": [1, 1, 28, 28], "datatype": "FP32",
                             "data": ["a"] * 784}]}).encode(), 400, "list of numbers"),
    (_request(np.zeros((1, 1, 28, 28), np.float32), outputs=[{"name": "membrane"}]), 400, "unknown output"),
    (_request(np.zeros((1, 1, 28, 28), np.float32)).replace(b'"input"', b'"image"'), 400, "named 'input'"),
    (_request(np.zeros((1, 1, 28, 28), np.float32)).replace(b'[1, 1, 28, 28]', b'[99999999999999999999, 1, 28, 28]'),
     400, "needs 78399999999999999999216"),
])
def test_bad_requests_get_4xx_and_the_server_keeps_serving(server, images, body, status, message):
    code, answer = _post(server, "/v2/models/tiny/infer", body)
    assert code == status and message in answer["error"]
    code, answer = _post(server, "/v2/models/tiny/infer", _request(images[:1]))
    assert code == 200 and answer["outputs"][0]["shape"] == [1, 10]


def test_oversized_unknown_and_malformed_binary_requests(server, images):
    big = _request(np.zeros((400, 1, 28, 28), np.float32))  # > 1 MiB limit of the fixture
    assert len(big) > 1 << 20
    code, answer = _post(server, "/v2/models/tiny/infer", big)
    assert code == 413 and "exceeds the limit" in answer["error"]
    assert _post(server, "/v2/models/other/infer", _request(images[:1]))[0] == 404
    assert _post(server, "/v2/models/tiny/versions/2/infer", _request(images[:1]))[0] == 404
    assert _get(server, "/v2/models/tiny/infer")[0] == 405
    assert _get(server, "/nowhere")[0] == 404
    assert _post(server, "/v2/models/tiny/infer", b"{}", {"Content-Length": "-5"})[0] == 400
    head = json.dumps({"inputs": [{"name": "input", "shape": [1, 1, 28, 28], "datatype": "FP32",
                                   "parameters": {"binary_data_size": 100}}]}).encode()
    code, answer = _post(server, "/v2/models/tiny/infer", head + b"\0" * 100,
                         {"Inference-Header-Content-Length": str(len(head))})
    assert code == 400 and "needs 3136" in answer["error"]
    code, answer = _post(server, "/v2/models/tiny/infer", head, {"Inference-Header-Content-Length": "99999"})
    assert code == 400 and "does not fit" in answer["error"]
    assert _post(server, "/v2/models/tiny/infer", _request(images[:1]))[0] == 200


def test_batcher_merges_concurrent_requests_and_splits_results(runtime, images):
    batcher = Batcher(runtime, max_batch=16, max_delay_ms=200)
    try:
        sizes = [1, 2, 3, 4]
        chunks = np.split(images[:10], np.cumsum(sizes)[:-1])
        futures = [batcher.submit(c) for c in chunks]
        results = [f.result(timeout=30) for f in futures]
    finally:
        batcher.close()
    for chunk, (logits, spikes) in zip(chunks, results):
        want_logits, want_spikes = runtime(chunk)
        assert np.allclose(logits, want_logits, atol=1e-5) and np.array_equal(spikes, want_spikes)


def test_metrics_count_requests_errors_batches_and_spikes(runtime, images):
    with InferenceServer(runtime, "tiny", port=0, max_batch=32, max_delay_ms=100) as srv:
        threads = [threading.Thread(target=_post, args=(srv, "/v2/models/tiny/infer", _request(images[i:i + 1])))
                   for i in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        _post(srv, "/v2/models/tiny/infer", b"{")
        code, text = _get(srv, "/metrics")
    text = text.decode()
    assert code == 200
    assert 'gee_requests_total{endpoint="infer",code="200"} 8' in text
    assert 'gee_requests_total{endpoint="infer",code="400"} 1' in text
    assert "gee_request_errors_total 1" in text
    assert 'gee_inference_duration_seconds_count 8' in text
    batches = int(re.search(r"gee_batch_size_count (\d+)", text)[1])
    assert int(re.search(r"gee_batch_size_sum (\d+)", text)[1]) == 8 and batches < 8  # some were merged
    served = runtime(images[:8])[1].sum(0)
    for name, total in zip(runtime.info.spiking_layers, served):
        assert f'gee_spikes_total{{model="tiny",layer="{name}"}} {total:.0f}' in text


def test_short_load_has_no_errors(server, images):
    result = load_test("127.0.0.1", server.port, "tiny", images, clients=4, duration_s=2.0)
    assert result["errors"] == 0, result["error_examples"]
    assert result["ok"] > 10


@pytest.mark.slow
def test_load_16_clients_for_20_seconds(server, images):
    result = load_test("127.0.0.1", server.port, "tiny", images, clients=16, duration_s=20.0)
    print(json.dumps(result))
    assert result["errors"] == 0, result["error_examples"]
    assert result["ok"] > 16


def test_serve_cli_binds_loopback_and_answers(serving_onnx, tmp_path):
    proc = subprocess.Popen([sys.executable, "-m", "gee_deploy.cli", "serve", str(serving_onnx), "--port", "0",
                             "--name", "tiny", "--threads", "1"], stderr=subprocess.PIPE, text=True)
    try:
        line = proc.stderr.readline()
        m = re.search(r"http://127\.0\.0\.1:(\d+)/v2/models/tiny/infer", line)
        assert m, line
        conn = http.client.HTTPConnection("127.0.0.1", int(m[1]), timeout=30)
        conn.request("GET", "/v2/health/ready")
        assert conn.getresponse().status == 200
        conn.close()
    finally:
        proc.terminate()
        proc.wait(timeout=10)
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not a graph")
    r = subprocess.run([sys.executable, "-m", "gee_deploy.cli", "serve", str(bad)], capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "bad.onnx cannot be loaded" in r.stderr
