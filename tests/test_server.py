"""The KServe v2 / OIP server: tritonclient round trips (HTTP and gRPC), Triton's extensions, bad requests,
dynamic batching, metrics, limits, timeouts, and the CLI's lifecycle. Fuzzing is in test_server_fuzz.py."""
from __future__ import annotations

import http.client
import json
import re
import signal
import socket
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

from gee_deploy.data import load_test_arrays
from gee_deploy.serving import codec
from gee_deploy.serving.batcher import Batcher
from gee_deploy.serving.codec import classify, http_status
from gee_deploy.evaluation.loadtest import load_test
from gee_deploy.serving.runtimes import OrtRuntime
from gee_deploy.serving.config import ServeConfigError
from gee_deploy.serving.server import InferenceServer, ServeConfig, parse_ready_line, ready_line
from gee_deploy.spec import INPUT_NAME, LOGITS, OUTPUT_NAMES, SPIKE_COUNTS
from gee_deploy.triton_config import to_json


@pytest.fixture(scope="module")
def images():
    return load_test_arrays("synthetic", limit=64)[0]


@pytest.fixture(scope="module")
def runtime(serving_onnx):
    return OrtRuntime(serving_onnx, threads=1)


@pytest.fixture(scope="module")
def server(runtime):
    with InferenceServer(runtime, ServeConfig(name="tiny", port=0, grpc_port=0, max_batch=16, max_delay_ms=5,
                                                      max_body_bytes=1 << 20, drain_s=2)) as srv:
        yield srv


def _post(srv, path: str, body, headers: dict | None = None) -> tuple[int, dict]:
    conn = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=60)
    try:
        conn.request("POST", path, body, headers or {"Content-Type": "application/json"})
        resp = conn.getresponse()
        data = resp.read()
        try:
            return resp.status, json.loads(data) if data else {}
        except ValueError:
            return resp.status, {"error": data.decode(errors="replace")}
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
    return json.dumps({"inputs": [{"name": INPUT_NAME, "shape": list(x.shape), "datatype": datatype,
                                   "data": x.ravel().tolist()}], **extra}).encode()


def _top_k(logits: np.ndarray, k: int, class_names) -> list[list[str]]:
    """The classification extension's answer, computed independently of the server's code."""
    rows = []
    for row in logits:
        best = sorted(range(len(row)), key=lambda j: (-row[j], j))[:k]
        rows.append([f"{row[j]:f}:{j}:{class_names[j]}" for j in best])
    return rows


def test_tritonclient_http_round_trip_equals_onnxruntime(server, runtime, images):
    import tritonclient.http as httpclient

    client = httpclient.InferenceServerClient(server.url)
    assert client.is_server_live() and client.is_server_ready() and client.is_model_ready("tiny")
    meta = client.get_model_metadata("tiny")
    assert meta["inputs"] == [{"name": INPUT_NAME, "datatype": "FP32", "shape": [-1, 1, 28, 28]}]
    assert [o["name"] for o in meta["outputs"]] == list(OUTPUT_NAMES)
    x = images[:8]
    want_logits, want_spikes = runtime(x)
    for binary in (True, False):
        inp = httpclient.InferInput(INPUT_NAME, list(x.shape), "FP32")
        inp.set_data_from_numpy(x, binary_data=binary)
        outputs = [httpclient.InferRequestedOutput(n, binary_data=binary) for n in OUTPUT_NAMES]
        result = client.infer("tiny", [inp], outputs=outputs, request_id="r1")
        assert np.array_equal(result.as_numpy(LOGITS), want_logits)
        assert np.array_equal(result.as_numpy(SPIKE_COUNTS), want_spikes)
        assert result.get_response()["id"] == "r1"
        # classification extension: top-3 as "score:index:label", BYTES [N, 3]
        result = client.infer("tiny", [inp], outputs=[httpclient.InferRequestedOutput(LOGITS, binary_data=binary,
                                                                                      class_count=3)])
        top = result.as_numpy(LOGITS)
        assert top.shape == (8, 3)
        as_text = [[v.decode() if isinstance(v, bytes) else v for v in row] for row in top]  # JSON gives str
        assert as_text == _top_k(want_logits, 3, runtime.spec.class_names)
    result = client.infer("tiny", [inp])  # no outputs named: all of them, binary
    assert np.array_equal(result.as_numpy(LOGITS), want_logits)

    config = client.get_model_config("tiny")
    assert config["max_batch_size"] == 16 and config["platform"] == "onnxruntime_onnx"
    assert config["input"] == [{"name": INPUT_NAME, "data_type": "TYPE_FP32", "dims": [1, 28, 28]}]
    assert [(o["name"], o["dims"]) for o in config["output"]] == [
        (LOGITS, [len(runtime.spec.class_names)]), (SPIKE_COUNTS, [len(runtime.spec.spiking_layers)])]
    stats = client.get_inference_statistics("tiny")["model_stats"][0]
    assert stats["name"] == "tiny" and stats["inference_count"] >= 5 * 8
    assert stats["inference_stats"]["success"]["count"] >= 5
    assert sum(b["batch_size"] * b["compute_infer"]["count"] for b in stats["batch_stats"]) == stats["inference_count"]
    assert client.get_inference_statistics()["model_stats"][0]["name"] == "tiny"
    client.close()


def test_tritonclient_grpc_round_trip_equals_onnxruntime(server, runtime, images):
    import tritonclient.grpc as grpcclient

    client = grpcclient.InferenceServerClient(f"127.0.0.1:{server.grpc_port}")
    assert client.is_server_live() and client.is_server_ready() and client.is_model_ready("tiny")
    meta = client.get_model_metadata("tiny", as_json=True)
    assert meta["inputs"] == [{"name": INPUT_NAME, "datatype": "FP32", "shape": ["-1", "1", "28", "28"]}]
    assert [o["name"] for o in meta["outputs"]] == list(OUTPUT_NAMES)
    assert "classification" in client.get_server_metadata(as_json=True)["extensions"]
    x = images[:6]
    want_logits, want_spikes = runtime(x)
    inp = grpcclient.InferInput(INPUT_NAME, list(x.shape), "FP32")
    inp.set_data_from_numpy(x)
    result = client.infer("tiny", [inp], outputs=[grpcclient.InferRequestedOutput(n) for n in OUTPUT_NAMES],
                          request_id="g1")
    assert np.array_equal(result.as_numpy(LOGITS), want_logits)
    assert np.array_equal(result.as_numpy(SPIKE_COUNTS), want_spikes)
    assert result.get_response().id == "g1"
    result = client.infer("tiny", [inp], outputs=[grpcclient.InferRequestedOutput(LOGITS, class_count=2)])
    assert [[v.decode() for v in row] for row in result.as_numpy(LOGITS)] == _top_k(want_logits, 2,
                                                                                       runtime.spec.class_names)
    config = client.get_model_config("tiny", as_json=True)["config"]
    assert config["max_batch_size"] == 16 and config["input"][0]["dims"] == ["1", "28", "28"]
    stats = client.get_inference_statistics("tiny", as_json=True)["model_stats"][0]
    assert int(stats["inference_count"]) >= 12 and int(stats["execution_count"]) >= 1
    from tritonclient.utils import InferenceServerException

    with pytest.raises(InferenceServerException, match="inputs.0.shape"):
        bad = grpcclient.InferInput(INPUT_NAME, [1, 1, 28, 27], "FP32")
        bad.set_data_from_numpy(np.zeros((1, 1, 28, 27), np.float32))
        client.infer("tiny", [bad])
    with pytest.raises(InferenceServerException, match="unknown model"):
        client.get_model_config("other")
    with pytest.raises(InferenceServerException, match="not implemented"):  # UNIMPLEMENTED, server keeps going
        client.get_model_repository_index()
    with pytest.raises(InferenceServerException, match="classification applies to"):
        client.infer("tiny", [inp], outputs=[grpcclient.InferRequestedOutput(SPIKE_COUNTS, class_count=2)])
    client.close()


def test_classify_orders_best_first_and_clamps_k():
    logits = np.array([[0.5, 2.0, 2.0, -1.0]], np.float32)
    assert classify(logits, 3, ["a", "b", "c", "d"]).tolist() == [[b"2.000000:1:b", b"2.000000:2:c",
                                                                    b"0.500000:0:a"]]
    assert classify(logits, 10, []).shape == (1, 4) and classify(logits, 1, [])[0, 0] == b"2.000000:1"


_ZEROS = np.zeros((1, 1, 28, 28), np.float32)


@pytest.mark.parametrize("body, status, message", [
    (b"{not json", 400, "not valid JSON"),
    (b"[]", 400, "body: Input should be an object"),
    (b'{"inputs": 5}', 400, "inputs: Input should be a valid array"),
    (_request(np.zeros((1, 1, 28, 27), np.float32)), 400, "inputs.0.shape: input shape must be [N, 1, 28, 28]"),
    (_request(_ZEROS, datatype="INT32"), 400, "inputs.0.datatype: input datatype must be FP32"),
    (_request(np.full((1, 1, 28, 28), np.nan, np.float32)), 400, "NaN or Inf"),
    (_request(np.full((1, 1, 28, 28), np.inf, np.float32)), 400, "NaN or Inf"),
    (json.dumps({"inputs": [{"name": INPUT_NAME, "shape": [1, 1, 28, 28], "datatype": "FP32",
                             "data": [1.0] * 5}]}).encode(), 400, "holds 5 values"),
    (json.dumps({"inputs": [{"name": INPUT_NAME, "shape": [1, 1, 28, 28], "datatype": "FP32",
                             "data": ["a"] * 784}]}).encode(), 400, "inputs.0.data: must be a flat or nested list"),
    (json.dumps({"inputs": [{"name": INPUT_NAME, "shape": [1, 1, 28, 28], "datatype": "FP32",
                             "data": [10 ** 400] * 784}]}).encode(), 400, "inputs.0.data"),
    (json.dumps({"inputs": [{"name": INPUT_NAME, "shape": [1, 1, 28, 28], "datatype": "FP32",
                             "data": ["0.5"] * 784}]}).encode(), 400, "inputs.0.data: must be a flat or nested"),
    (json.dumps({"inputs": [{"name": INPUT_NAME, "shape": [1, 1, 28, 28], "datatype": "FP32",
                             "data": [True] * 784}]}).encode(), 400, "inputs.0.data: must be a flat or nested"),
    (json.dumps({"inputs": [{"name": INPUT_NAME, "shape": [1, 1, 28, 28], "datatype": "FP32",
                             "data": [1e300] * 784}]}).encode(), 400, "NaN or Inf"),
    (_request(_ZEROS, outputs=[{"name": "membrane"}]), 400, "outputs.0.name: unknown output"),
    (_request(_ZEROS, outputs=[{"name": LOGITS}, {"name": LOGITS}]), 400, "requested twice"),
    (_request(_ZEROS).replace(b'"input"', b'"image"'), 400, "inputs.0.name: this model's input is 'input'"),
    (_request(_ZEROS).replace(b'[1, 1, 28, 28]', b'[99999999999999999999, 1, 28, 28]'), 400,
     "needs 78399999999999999999216"),
    # the cases: a wrongly typed field was a 500, a string "false" was read as true
    (json.dumps({"inputs": [{"name": INPUT_NAME, "shape": [1, 1, 28, 28], "datatype": "FP32",
                             "data": [0.0] * 784, "parameters": 5}]}).encode(), 400, "inputs.0.parameters"),
    (_request(_ZEROS, parameters={"binary_data_output": "false"}), 400, "parameters.binary_data_output"),
    (_request(_ZEROS, id=7), 400, "id: Input should be a valid string"),
    (_request(_ZEROS, outputs=[{"name": SPIKE_COUNTS, "parameters": {"classification": 2}}]), 400,
     "classification applies to 'logits' only"),
    (_request(_ZEROS, outputs=[{"name": LOGITS, "parameters": {"classification": -1}}]), 400,
     "outputs.0.parameters.classification"),
    (_request(_ZEROS, outputs=[{"name": LOGITS, "parameters": {"shared_memory_region": "r"}}]), 400,
     "shared_memory extension is not implemented"),
    (_request(_ZEROS, parameters={"sequence_id": 3}), 400, "sequence extension is not implemented"),
    (_request(_ZEROS, parameters={"custom": {"nested": 1}}), 400, "parameters.custom"),
    (_request(_ZEROS, output=[{"name": LOGITS}]), 400, "output: Extra inputs are not permitted"),
])
def test_bad_requests_get_4xx_naming_the_field_and_the_server_keeps_serving(server, images, body, status,
                                                                            message):
    code, answer = _post(server, "/v2/models/tiny/infer", body)
    assert code == status and message in answer["error"], answer
    code, answer = _post(server, "/v2/models/tiny/infer", _request(images[:1]))
    assert code == 200 and answer["outputs"][0]["shape"] == [1, 10]


def test_binary_data_output_false_returns_json(server, images):
    code, answer = _post(server, "/v2/models/tiny/infer", _request(images[:2], parameters={"binary_data_output": False}))
    assert code == 200 and all("data" in o for o in answer["outputs"])


def test_unknown_paths_methods_and_malformed_binary_requests(server, images):
    assert _post(server, "/v2/models/other/infer", _request(images[:1]))[0] == 404
    code, answer = _post(server, "/v2/models/tiny/versions/2/infer", _request(images[:1]))
    assert code == 404 and "only version 1" in answer["error"]
    code, body = _get(server, "/v2/models/tiny/infer")
    assert code == 405 and "GET is not allowed" in json.loads(body)["error"]
    assert _get(server, "/nowhere")[0] == 404
    assert _get(server, "/v2/models/tiny/config")[0] == 200 and _get(server, "/v2/models/tiny/versions/1/stats")[0] == 200
    head = json.dumps({"inputs": [{"name": INPUT_NAME, "shape": [1, 1, 28, 28], "datatype": "FP32",
                                   "parameters": {"binary_data_size": 100}}]}).encode()
    code, answer = _post(server, "/v2/models/tiny/infer", head + b"\0" * 100,
                         {"Inference-Header-Content-Length": str(len(head))})
    assert code == 400 and "needs 3136" in answer["error"]
    code, answer = _post(server, "/v2/models/tiny/infer", head, {"Inference-Header-Content-Length": "99999"})
    assert code == 400 and "does not fit" in answer["error"]
    code, answer = _post(server, "/v2/models/tiny/infer", head, {"Inference-Header-Content-Length": "x"})
    assert code == 400 and "must be an integer" in answer["error"]
    code, answer = _post(server, "/v2/models/tiny/infer", _request(images[:1]), {"Content-Encoding": "gzip"})
    assert code == 415
    assert _post(server, "/v2/models/tiny/infer", _request(images[:1]))[0] == 200


def test_oversized_body_gets_a_413_the_client_can_read(server, images):
    """The issue's case: 300 MB against the limit; the client finishes sending and reads the 413."""
    chunk = b"\0" * (1 << 20)
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=60)
    conn.request("POST", "/v2/models/tiny/infer", (chunk for _ in range(300)),
                 {"Content-Length": str(300 << 20), "Content-Type": "application/json"})
    resp = conn.getresponse()
    assert resp.status == 413 and "exceeds the limit of 1048576" in json.loads(resp.read())["error"]
    # the connection is still usable: the server read past the refused body
    conn.request("POST", "/v2/models/tiny/infer", _request(images[:1]), {"Content-Type": "application/json"})
    assert conn.getresponse().status == 200
    conn.close()
    # a chunked body (no Content-Length) is refused once it passes the limit
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=60)
    conn.request("POST", "/v2/models/tiny/infer", (chunk for _ in range(3)), encode_chunked=True)
    resp = conn.getresponse()
    assert resp.status == 413 and "exceeds the limit" in json.loads(resp.read())["error"]
    conn.close()


def test_batcher_merges_concurrent_requests_and_splits_results(runtime, images):
    batcher = Batcher(runtime, max_batch=16, max_delay_ms=200)
    try:
        sizes = [1, 2, 3, 4]
        chunks = np.split(images[:10], np.cumsum(sizes)[:-1])
        futures = [batcher.submit(c) for c in chunks]
        results = [f.result(timeout=30) for f in futures]
    finally:
        batcher.close()
    for chunk, r in zip(chunks, results):
        want_logits, want_spikes = runtime(chunk)
        assert np.allclose(r.logits, want_logits, atol=1e-5) and np.array_equal(r.spike_counts, want_spikes)
        assert r.batch_size == 10 and r.queue_s >= 0


def _metric(text: str, line: str) -> float:
    m = re.search(rf"^{re.escape(line)} (\S+)$", text, re.M)
    assert m, f"{line} not in metrics"
    return float(m[1])


def test_metrics_count_requests_errors_batches_and_spikes(runtime, images):
    with InferenceServer(runtime, ServeConfig(name="tiny", port=0, max_batch=32, max_delay_ms=100)) as srv:
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
    assert _metric(text, 'gee_requests_total{code="200",endpoint="infer",protocol="http"}') == 8
    assert _metric(text, 'gee_requests_total{code="400",endpoint="infer",protocol="http"}') == 1
    assert _metric(text, 'gee_request_errors_total{protocol="http"}') == 1
    assert _metric(text, 'gee_inference_duration_seconds_count{protocol="http"}') == 8
    assert _metric(text, "gee_inflight_requests") == 0
    batches = _metric(text, "gee_batch_size_count")
    assert _metric(text, "gee_batch_size_sum") == 8 and batches < 8  # some were merged
    served = runtime(images[:8])[1].sum(0)
    for name, total in zip(runtime.spec.spiking_layers, served):
        assert _metric(text, f'gee_spikes_total{{layer="{name}",model="tiny"}}') == total


def test_concurrency_limit_answers_503_beyond_it(runtime, images):
    with InferenceServer(runtime, ServeConfig(name="tiny", port=0, max_batch=64, max_delay_ms=1500,
                                                      max_concurrency=2)) as srv:
        answers = []
        threads = [threading.Thread(target=lambda: answers.append(_post(srv, "/v2/models/tiny/infer",
                                                                         _request(images[:1]))))
                   for _ in range(2)]
        for t in threads:
            t.start()
        for _ in range(500):  # bounded: until both wait in the batcher's window
            if srv.service.inflight == 2:
                break
            time.sleep(0.002)
        assert srv.service.inflight == 2
        code, answer = _post(srv, "/v2/models/tiny/infer", _request(images[:1]))
        assert code == 503 and "limit is 2" in answer["error"]
        assert _get(srv, "/v2/health/ready")[0] == 200  # probes are not limited
        for t in threads:
            t.join()
    assert [c for c, _ in answers] == [200, 200]


def test_a_request_that_outwaits_its_timeout_gets_503_and_is_not_run(runtime, images):
    with InferenceServer(runtime, ServeConfig(name="tiny", port=0, max_batch=64, max_delay_ms=1000,
                                                      infer_timeout_s=0.2)) as srv:
        code, answer = _post(srv, "/v2/models/tiny/infer", _request(images[:1]))
        assert code == 503 and "did not finish within 0.2 s" in answer["error"]
        assert srv.service.inflight == 0
    stats = srv.service.stats.as_dict("tiny", "1")  # after close, so the batcher has finished what it held
    assert stats["inference_stats"]["fail"]["count"] == 1 and stats["inference_count"] == 0


def test_stalled_connections_do_not_block_and_are_released_after_the_timeout(runtime, images):
    """200 clients that send half a request and wait: health still answers, and each stalled client gets a
    408 and a closed connection once the request timeout passes."""
    with InferenceServer(runtime, ServeConfig(name="tiny", port=0, request_timeout_s=1.0)) as srv:
        body = _request(images[:1])
        socks = []
        for i in range(200):
            s = socket.create_connection(("127.0.0.1", srv.port), timeout=30)
            if i % 2:  # headers, then half the body
                s.sendall(b"POST /v2/models/tiny/infer HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % len(body)
                          + body[:len(body) // 2])
            else:  # half the headers
                s.sendall(b"POST /v2/models/tiny/infer HTTP/1.1\r\nHost: x\r\nContent-Le")
            socks.append(s)
        t0 = time.perf_counter()
        code, answer = _get(srv, "/v2/health/ready")
        print(f"ready answered in {1e3 * (time.perf_counter() - t0):.1f} ms with 200 stalled connections")
        assert code == 200 and json.loads(answer) == {"ready": True}
        assert _post(srv, "/v2/models/tiny/infer", body)[0] == 200
        released = 0
        for s in socks:  # each read returns once the server answers 408 and closes (socket timeout: 30 s)
            data = b""
            while chunk := s.recv(4096):
                data += chunk
            released += data.startswith(b"HTTP/1.1 408")
            s.close()
        assert released == 200


def test_short_load_has_no_errors_over_http_and_grpc(server, images):
    for protocol, port in (("http", server.port), ("grpc", server.grpc_port)):
        result = load_test("127.0.0.1", port, "tiny", images, clients=4, duration_s=1.5, protocol=protocol)
        assert result["errors"] == 0 and result["refused"] == 0, result["error_examples"]
        assert result["ok"] > 10


@pytest.mark.slow
def test_load_16_clients_for_20_seconds(server, images):
    for protocol, port in (("http", server.port), ("grpc", server.grpc_port)):
        result = load_test("127.0.0.1", port, "tiny", images, clients=16, duration_s=20.0, protocol=protocol)
        print(json.dumps(result))
        assert result["errors"] == 0, result["error_examples"]
        assert result["ok"] > 16


def _start_cli(onnx, *extra) -> tuple[subprocess.Popen, int, int | None]:
    proc = subprocess.Popen([sys.executable, "-m", "gee_deploy.cli", "serve", str(onnx), "--port", "0", "--name",
                             "tiny", "--threads", "1", *extra], stderr=subprocess.PIPE, text=True)
    line = proc.stderr.readline()
    ports = parse_ready_line(line)
    if ports is None or "/v2/models/tiny/infer" not in line:
        proc.kill()
        pytest.fail(f"server did not start: {line}")
    return proc, *ports


def test_serve_cli_binds_loopback_answers_and_refuses_a_bad_file(serving_onnx, tmp_path):
    proc, port, _ = _start_cli(serving_onnx)
    try:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        conn.request("GET", "/v2/health/ready")
        assert conn.getresponse().status == 200
        conn.close()
    finally:
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=30) == 0
    with socket.create_server(("127.0.0.1", 0)) as busy:
        taken = busy.getsockname()[1]
        r = subprocess.run([sys.executable, "-m", "gee_deploy.cli", "serve", str(serving_onnx), "--port", "0",
                            "--grpc-port", str(taken)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and r.stderr == f"error: cannot listen on 127.0.0.1:{taken} (gRPC): Address already in use\n"
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not a graph")
    r = subprocess.run([sys.executable, "-m", "gee_deploy.cli", "serve", str(bad)], capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "bad.onnx cannot be loaded" in r.stderr
    r = subprocess.run([sys.executable, "-m", "gee_deploy.cli", "serve", str(serving_onnx), "--port", "0", "--name",
                        "a b"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and r.stderr == "error: name (--name) 'a b' must be letters, digits, '_', '.', '-'\n"


@pytest.mark.parametrize("field, value, words", [("name", "", "--name"), ("max_batch", 0, "--max-batch"),
                                                 ("sequence_idle_s", 0.0, "--sequence-idle-s"),
                                                 ("max_body_bytes", 0, "--max-body-mb"), ("port", 70000, "--port")])
def test_a_serve_config_is_checked_once_where_it_is_built_and_names_the_option(field, value, words):
    with pytest.raises(ServeConfigError, match=f"{field} \\({words}\\)"):
        ServeConfig(**{field: value})


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_sigterm_under_load_cuts_no_request_and_exits_0(serving_onnx, images, protocol):
    """What an orchestrator does: SIGTERM while 8 clients send. Every request the server took is answered;
    afterwards connections are refused (the clients stop), and the process exits 0 without a traceback."""
    proc, port, grpc_port = _start_cli(serving_onnx, "--grpc-port", "0", "--max-delay-ms", "5")
    result = {}
    loader = threading.Thread(target=lambda: result.update(load_test(
        "127.0.0.1", port if protocol == "http" else grpc_port, "tiny", images, clients=8, duration_s=20,
        protocol=protocol)))
    loader.start()
    time.sleep(1.5)
    proc.send_signal(signal.SIGTERM)
    code = proc.wait(timeout=30)
    loader.join(timeout=60)
    stderr = proc.stderr.read()
    assert code == 0 and "Traceback" not in stderr, stderr
    assert result["errors"] == 0, result["error_examples"]
    assert result["ok"] > 8 and result["refused"] == 8  # every client stopped on a refusal, none on an error


def test_the_ready_line_scripts_wait_for_round_trips():
    assert parse_ready_line(ready_line("m", "m.onnx", "127.0.0.1:8000", None)) == (8000, None)
    assert parse_ready_line(ready_line("m", "m.onnx", "127.0.0.1:8000", "127.0.0.1:8001")) == (8000, 8001)
    assert parse_ready_line("error: cannot listen on 127.0.0.1:8000: Address in use") is None


def test_a_batch_above_the_advertised_max_batch_size_is_refused_over_http_and_grpc(server, images):
    import tritonclient.grpc as grpcclient
    from tritonclient.utils import InferenceServerException

    x = images[:17]  # the server fixture advertises max_batch_size 16
    code, answer = _post(server, "/v2/models/tiny/infer", _request(x))
    assert code == 400 and "inputs.0.shape" in answer["error"] and "max_batch_size 16" in answer["error"]
    client = grpcclient.InferenceServerClient(f"127.0.0.1:{server.grpc_port}")
    inp = grpcclient.InferInput(INPUT_NAME, list(x.shape), "FP32")
    inp.set_data_from_numpy(x)
    with pytest.raises(InferenceServerException, match="max_batch_size 16"):
        client.infer("tiny", [inp])
    client.close()
    assert _post(server, "/v2/models/tiny/infer", _request(images[:16]))[0] == 200


def test_the_config_endpoints_and_the_exported_config_pbtxt_are_one_document(server, runtime, serving_onnx, tmp_path):
    """/config (HTTP), ModelConfig (gRPC) and `export --format triton`'s config.pbtxt come from one builder: they
    differ only where the server describes itself (its batching delay, its one CPU instance)."""
    import onnx
    import tritonclient.grpc as grpcclient
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2

    from gee_deploy.export.triton import write_triton_repository

    client = grpcclient.InferenceServerClient(f"127.0.0.1:{server.grpc_port}")
    served = client.get_model_config("tiny").config
    client.close()
    code, body = _get(server, "/v2/models/tiny/config")
    assert code == 200 and json.loads(body) == to_json(served)  # HTTP: the same message, 64-bit ints as numbers
    repo = write_triton_repository(onnx.load(str(serving_onnx)), runtime.spec, tmp_path, max_batch_size=16, name="tiny")
    exported = text_format.Parse((repo / "config.pbtxt").read_text(), model_config_pb2.ModelConfig())
    assert served.dynamic_batching.max_queue_delay_microseconds == 5000  # the fixture's --max-delay-ms 5
    assert exported.dynamic_batching.max_queue_delay_microseconds == 2000  # serve's default
    assert [(g.count, g.kind) for g in served.instance_group] == [(1, model_config_pb2.ModelInstanceGroup.KIND_CPU)]
    assert not exported.instance_group  # Triton chooses (one instance per GPU)
    for config in (served, exported):
        config.dynamic_batching.max_queue_delay_microseconds = 0
        config.ClearField("instance_group")
    assert served == exported


def test_every_protocol_error_has_one_grpc_status_and_the_http_status_follows_from_it():
    """Triton's mapping (src/http_server.cc HttpCodeFromError): UNAVAILABLE is 503, so a full server (ServerBusy)
    is UNAVAILABLE over gRPC, as Triton answers a full queue; HTTP refines only 413 and 415. The sequence
    extension's refusals: a sequence not live is INVALID_ARGUMENT (Triton's own), a busy one ABORTED (409), a full
    state table RESOURCE_EXHAUSTED (429)."""
    import grpc

    errors = [c for c in vars(codec).values() if isinstance(c, type) and issubclass(c, codec.ProtocolError)]
    assert len(errors) >= 8
    for cls in errors:
        grpc.StatusCode[cls.grpc_code]  # a real gRPC status, or KeyError
    assert {c.__name__: (http_status(c("x")), c.grpc_code) for c in errors if c is not codec.ProtocolError} == {
        "InvalidInput": (400, "INVALID_ARGUMENT"), "Unsupported": (400, "INVALID_ARGUMENT"),
        "UnsupportedMediaType": (415, "INVALID_ARGUMENT"), "ModelNotFound": (404, "NOT_FOUND"),
        "PayloadTooLarge": (413, "RESOURCE_EXHAUSTED"), "ServerBusy": (503, "UNAVAILABLE"),
        "NotReady": (503, "UNAVAILABLE"), "InferenceTimeout": (503, "UNAVAILABLE"),
        "UnknownSequence": (400, "INVALID_ARGUMENT"), "SequenceBusy": (409, "ABORTED"),
        "TooManySequences": (429, "RESOURCE_EXHAUSTED")}


def test_a_keep_alive_connection_idle_when_the_drain_starts_may_bring_one_more_request(runtime, images):
    """What uvicorn's own shutdown does not do (it closes such a connection at once, resetting a request already
    on its way): the connection is held for idle_grace_s, its request is answered with Connection: close, and the
    listener refuses new connections meanwhile. Fails when a uvicorn upgrade changes how it closes connections."""
    srv = InferenceServer(runtime, ServeConfig(name="tiny", port=0, drain_s=5, idle_grace_s=3.0)).start()
    conn = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=30)
    conn.request("POST", "/v2/models/tiny/infer", _request(images[:1]), {"Content-Type": "application/json"})
    first = conn.getresponse()
    assert first.status == 200 and first.getheader("connection") is None
    first.read()
    closer = threading.Thread(target=srv.close)
    closer.start()
    for _ in range(1000):  # bounded: until the listener is closed
        try:
            socket.create_connection(("127.0.0.1", srv.port), timeout=1).close()
        except ConnectionRefusedError:
            break
        time.sleep(0.005)
    else:
        pytest.fail("the listener did not close")
    assert not srv.service.ready
    conn.request("POST", "/v2/models/tiny/infer", _request(images[:1]), {"Content-Type": "application/json"})
    last = conn.getresponse()
    assert last.status == 200 and last.getheader("connection") == "close"
    assert json.loads(last.read())["outputs"][0]["shape"] == [1, 10]
    conn.close()
    closer.join(timeout=15)
    assert not closer.is_alive()
