"""Serving a streaming graph: Triton's sequence extension over HTTP, gRPC and gRPC's stream, the state table's
limits and errors, and the Triton repository of a streaming export."""
from __future__ import annotations

import http.client
import json
import queue
import random
import signal
import threading
import time

import numpy as np
import onnx
import pytest
import torch
from test_export import FAST, small_model
from test_server import _start_cli

from gee_deploy.formats import export_loaded
from gee_deploy.ort_session import create_session
from gee_deploy.serving.codec import MEAN_LOGITS, TOTAL_SPIKE_COUNTS
from gee_deploy.serving.runtimes import OrtRuntime
from gee_deploy.serving.server import InferenceServer, ServeConfig
from gee_deploy.spec import INPUT_NAME, LOGITS, SPIKE_COUNTS, ModelSpec

T = 4
pytestmark = pytest.mark.usefixtures("one_thread")


# ---- the graphs and their references ------------------------------------------------------------------------

@pytest.fixture(scope="module")
def graphs(tmp_path_factory):
    """(unrolled ONNX path, streaming ONNX path, images [8, 1, 28, 28]) of a lively SmallNet with T = 4."""
    model, _ = small_model("smallnet", genes=4, timesteps=T)
    images = torch.rand(8, 1, 28, 28, generator=torch.Generator().manual_seed(1))
    out = tmp_path_factory.mktemp("streaming")
    export_loaded(model, out / "unrolled.onnx", variant="dense", images=images[:4], validation=FAST)
    export_loaded(model, out / "stream.onnx", variant="dense", streaming=True, images=images[:4], validation=FAST)
    return out / "unrolled.onnx", out / "stream.onnx", images.numpy()


def unrolled_per_step(path, x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The unrolled graph's own per-step values, read from inside it: (step logits [T, N, K], step spike counts
    [T, N, L], logits [N, K], spike_counts [N, L])."""
    model = onnx.load(str(path))
    spec = ModelSpec.from_metadata({p.key: p.value for p in model.metadata_props}, str(path))
    inner = ["per_step_logits", *(f"{lif}.per_step" for lif in spec.spiking_layers)]
    for name in inner:
        model.graph.output.append(onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None))
    out = dict(zip([LOGITS, SPIKE_COUNTS, *inner],
                   create_session(model.SerializeToString()).run([LOGITS, SPIKE_COUNTS, *inner], {INPUT_NAME: x})))
    spikes = np.stack([out[f"{lif}.per_step"] for lif in spec.spiking_layers], axis=-1)  # each [T, N]: [T, N, L]
    return out["per_step_logits"], spikes, out[LOGITS], out[SPIKE_COUNTS]


def by_hand(path, frames: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The streaming graph run step by step with its membranes fed back: frames [T, N, ...] -> (logits
    [T, N, K], spike counts [T, N, L])."""
    session = create_session(str(path))
    spec = ModelSpec.from_onnx(path)
    shapes = {i.name: i.shape[1:] for i in session.get_inputs()}
    states = {name: np.zeros([frames.shape[1], *shapes[name]], np.float32) for name in spec.state_inputs}
    logits, spikes = [], []
    for frame in frames:
        out = session.run([LOGITS, SPIKE_COUNTS, *spec.state_outputs], {INPUT_NAME: frame, **states})
        logits.append(out[0])
        spikes.append(out[1])
        states = dict(zip(spec.state_inputs, out[2:]))
    return np.stack(logits), np.stack(spikes)


def serve(stream_path, **limits) -> InferenceServer:
    runtime = OrtRuntime(stream_path, threads=1, allow_streaming=True)
    config = {"name": "s", "port": 0, "grpc_port": 0, "max_delay_ms": 5, "drain_s": 2}
    return InferenceServer(runtime, ServeConfig(**{**config, **limits}))


# ---- clients: the stock tritonclient over each transport ----------------------------------------------------

class Refused(Exception):
    """A step the server refused: ``code`` is the HTTP status or the gRPC status name, ``message`` its text."""

    def __init__(self, code: str, message: str):
        super().__init__(f"{code}: {message}")
        self.code, self.message = code, message


class Client:
    """One step at a time over ``protocol`` ("http", "grpc" or "stream": gRPC's ModelStreamInfer)."""

    def __init__(self, srv: InferenceServer, protocol: str, model: str = "s"):
        import tritonclient.grpc as grpcclient
        import tritonclient.http as httpclient

        self.protocol, self.model = protocol, model
        self.lib = httpclient if protocol == "http" else grpcclient
        self.client = (httpclient.InferenceServerClient(srv.url) if protocol == "http" else
                       grpcclient.InferenceServerClient(f"127.0.0.1:{srv.grpc_port}"))
        self.answers: queue.Queue = queue.Queue()
        if protocol == "stream":
            self.client.start_stream(callback=lambda result, error: self.answers.put((result, error)))

    def send(self, sid, x: np.ndarray, start: bool = False, end: bool = False, request_id: str = "") -> None:
        """Stream only: send without waiting (the answer arrives through :meth:`receive`)."""
        inp = self.lib.InferInput(INPUT_NAME, list(x.shape), "FP32")
        inp.set_data_from_numpy(x)
        self.client.async_stream_infer(self.model, [inp], request_id=request_id, sequence_id=sid, sequence_start=start,
                                       sequence_end=end)

    def receive(self) -> tuple[str, dict]:
        result, error = self.answers.get(timeout=60)
        if error is not None:
            raise Refused("stream", str(error))
        return result.get_response().id, self._outputs(result)

    def step(self, sid, x: np.ndarray, start: bool = False, end: bool = False) -> dict:
        if self.protocol == "stream":
            self.send(sid, x, start, end)
            return self.receive()[1]
        from tritonclient.utils import InferenceServerException

        inp = self.lib.InferInput(INPUT_NAME, list(x.shape), "FP32")
        inp.set_data_from_numpy(x)
        try:
            result = self.client.infer(self.model, [inp], sequence_id=sid, sequence_start=start, sequence_end=end)
        except InferenceServerException as e:
            raise Refused(str(e.status()).removeprefix("StatusCode."), e.message()) from None
        return self._outputs(result)

    @staticmethod
    def _outputs(result) -> dict:
        return {name: result.as_numpy(name) for name in (LOGITS, SPIKE_COUNTS, MEAN_LOGITS, TOTAL_SPIKE_COUNTS)}

    def close(self) -> None:
        if self.protocol == "stream":
            self.client.stop_stream()
        self.client.close()


def check_sequence(answers: list[dict], unrolled: tuple, hand: tuple, i: int) -> None:
    """Sequence ``i``'s T answers against the unrolled graph's per-step values and the by-hand run."""
    step_logits, step_spikes, logits, spike_counts = unrolled
    hand_logits, hand_spikes = hand
    assert len(answers) == T
    for t, a in enumerate(answers):
        np.testing.assert_array_equal(a[SPIKE_COUNTS][0], step_spikes[t, i])
        np.testing.assert_array_equal(a[SPIKE_COUNTS][0], hand_spikes[t, i])
        np.testing.assert_allclose(a[LOGITS][0], step_logits[t, i], rtol=0, atol=1e-5)
        np.testing.assert_allclose(a[LOGITS][0], hand_logits[t, i], rtol=0, atol=1e-5)
        np.testing.assert_array_equal(a[TOTAL_SPIKE_COUNTS][0], step_spikes[:t + 1, i].sum(0))
        np.testing.assert_allclose(a[MEAN_LOGITS][0], step_logits[:t + 1, i].mean(0), rtol=0, atol=1e-5)
    np.testing.assert_array_equal(answers[-1][TOTAL_SPIKE_COUNTS][0], spike_counts[i])
    np.testing.assert_allclose(answers[-1][MEAN_LOGITS][0], logits[i], rtol=0, atol=1e-5)
    assert answers[-1][MEAN_LOGITS][0].argmax() == logits[i].argmax()


def run_interleaved(srv, images: np.ndarray, protocols: list[str], per_client: int, seed: int = 0) -> dict:
    """Each client (one per protocol entry, on its own thread) runs ``per_client`` sequences, interleaving their
    steps at random; sequence i is image i, fed at every step. Returns {sequence index: [T answers]}."""
    answers: dict[int, list] = {}
    errors: list = []

    def client_run(c: int, protocol: str) -> None:
        rng = random.Random(seed + c)
        client = Client(srv, protocol)
        try:
            mine = [c * per_client + k for k in range(per_client)]
            ids = {i: (f"seq-{i}" if i % 2 else 1000 + i) for i in mine}  # string and uint64 ids
            order = [i for i in mine for _ in range(T)]
            rng.shuffle(order)
            done = {i: 0 for i in mine}
            if protocol == "stream":  # sent without waiting: the server keeps each sequence's order
                for i in order:
                    t = done[i]
                    client.send(ids[i], images[i:i + 1], t == 0, t == T - 1, request_id=f"{i}:{t}")
                    done[i] += 1
                got = [client.receive() for _ in order]
                for i in mine:
                    answers[i] = [a for rid, a in sorted((rid, a) for rid, a in got if rid.split(":")[0] == str(i))]
                return
            for i in order:
                t = done[i]
                answers.setdefault(i, []).append(client.step(ids[i], images[i:i + 1], t == 0, t == T - 1))
                done[i] += 1
        except Exception as e:  # reported on the main thread
            errors.append(e)
        finally:
            client.close()

    threads = [threading.Thread(target=client_run, args=(c, p)) for c, p in enumerate(protocols)]
    for th in threads:
        th.start()
    for th in threads:
        th.join(timeout=300)
    assert not errors, errors
    return answers


def metric(srv, name: str) -> float:
    conn = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=30)
    conn.request("GET", "/metrics")
    text = conn.getresponse().read().decode()
    conn.close()
    return sum(float(line.split()[-1]) for line in text.splitlines() if line.startswith((name + " ", name + "{")))


def no_5xx(srv) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=30)
    conn.request("GET", "/metrics")
    text = conn.getresponse().read().decode()
    conn.close()
    served = [line for line in text.splitlines() if line.startswith("gee_requests_total{")]
    assert served and not [line for line in served if 'code="5' in line or "INTERNAL" in line or "UNKNOWN" in line]


# ---- equality with the unrolled graph -------------------------------------------------------------------------

def test_interleaved_sequences_over_http_grpc_and_the_grpc_stream_equal_the_unrolled_graph(graphs):
    unrolled_path, stream_path, images = graphs
    n = 6
    unrolled = unrolled_per_step(unrolled_path, images[:n])
    hand = by_hand(stream_path, np.repeat(images[None, :n], T, axis=0))
    assert unrolled[1].sum() > 0 and (unrolled[1][..., -1] > 0).any()  # every layer fires: the test can fail
    with serve(stream_path) as srv:
        answers = run_interleaved(srv, images, ["http", "grpc", "stream"], per_client=2)
        for i in range(n):
            check_sequence(answers[i], unrolled, hand, i)
        assert metric(srv, "gee_sequences_started_total") == n and metric(srv, "gee_sequences_ended_total") == n
        assert metric(srv, "gee_sequences_live") == 0
        no_5xx(srv)


def test_steps_of_different_sequences_batch_into_one_graph_call_and_stay_apart(graphs):
    unrolled_path, stream_path, images = graphs
    unrolled = unrolled_per_step(unrolled_path, images[:4])
    hand = by_hand(stream_path, np.repeat(images[None, :4], T, axis=0))
    with serve(stream_path, max_delay_ms=300) as srv:  # a wide window: the four steps of each round meet in it
        answers: dict[int, list] = {i: [] for i in range(4)}
        def one_step(i: int, t: int) -> None:
            client = Client(srv, "http")
            answers[i].append(client.step(i + 1, images[i:i + 1], t == 0, t == T - 1))
            client.close()

        for t in range(T):
            threads = [threading.Thread(target=one_step, args=(i, t)) for i in range(4)]
            for th in threads:
                th.start()
            for th in threads:
                th.join(timeout=60)
        for i in range(4):
            check_sequence(answers[i], unrolled, hand, i)
        sizes = srv.service.stats.as_dict("s", "1")["batch_stats"]
        assert max(b["batch_size"] for b in sizes) > 1  # steps of several sequences ran as one graph call


def test_per_step_event_frames_equal_the_streaming_graph_run_by_hand(graphs):
    _, stream_path, _ = graphs
    rng = np.random.default_rng(0)
    events = np.zeros(4000, dtype=[("x", "<i2"), ("y", "<i2"), ("t", "<i8"), ("p", "i1")])  # tonic's layout
    events["x"], events["y"] = rng.integers(0, 28, 4000), rng.integers(0, 28, 4000)
    events["t"], events["p"] = np.sort(rng.integers(0, 40_000, 4000)), rng.integers(0, 2, 4000)
    frames = np.zeros((T, 1, 1, 28, 28), np.float32)  # [T, N, C, H, W]: counts per 10 ms bin, scaled to [0, 1]
    np.add.at(frames, (np.minimum(events["t"] // 10_000, T - 1), 0, 0, events["y"], events["x"]), 1.0)
    frames /= frames.max()
    hand_logits, hand_spikes = by_hand(stream_path, frames)
    assert not np.array_equal(frames[0], frames[1])
    with serve(stream_path) as srv:
        client = Client(srv, "http")
        for t in range(T):
            a = client.step("events", frames[t], t == 0, t == T - 1)
            np.testing.assert_array_equal(a[SPIKE_COUNTS], hand_spikes[t])
            np.testing.assert_allclose(a[LOGITS], hand_logits[t], rtol=0, atol=1e-5)
        client.close()


# ---- refusals: 4xx naming the sequence, no other sequence touched ---------------------------------------------

@pytest.mark.parametrize("protocol", ["http", "grpc", "stream"])
def test_each_refusal_is_a_4xx_naming_the_sequence_and_leaves_other_sequences_alone(graphs, protocol):
    unrolled_path, stream_path, images = graphs
    unrolled = unrolled_per_step(unrolled_path, images[:1])
    hand = by_hand(stream_path, np.repeat(images[None, :1], T, axis=0))
    codes = {"http": ("400", "429", "400"), "grpc": ("INVALID_ARGUMENT", "RESOURCE_EXHAUSTED", "INVALID_ARGUMENT"),
             "stream": ("stream",) * 3}[protocol]
    x = images[:1]
    with serve(stream_path, max_sequences=2) as srv:
        client = Client(srv, protocol)
        kept = [client.step(7, x, start=True)]  # sequence 7 runs beside every refusal and must not notice
        with pytest.raises(Refused) as e:
            client.step(8, x)  # never started
        assert e.value.code == codes[0] and "sequence 8" in e.value.message and "sequence_start" in e.value.message
        kept.append(client.step(7, x))
        client.step("other", x, start=True)  # the table is full now (2)
        with pytest.raises(Refused) as e:
            client.step(9, x, start=True)
        assert e.value.code == codes[1] and "sequence 9" in e.value.message and "limit is 2" in e.value.message
        client.step("other", x, end=True)  # frees a slot
        with pytest.raises(Refused) as e:
            client.step("other", x)  # ended: refused like a sequence never started
        assert e.value.code == codes[2] and "'other'" in e.value.message and "ended" in e.value.message
        with pytest.raises(Refused) as e:
            client.step(10, np.concatenate([x, x]), start=True)  # a step holds one sample
        assert "[1, 1, 28, 28]" in e.value.message
        kept.append(client.step(7, x))
        kept.append(client.step(7, x, end=True))
        check_sequence(kept, unrolled, hand, 0)
        client.close()
        no_5xx(srv)


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_a_second_step_while_one_is_in_flight_is_refused_with_a_conflict(graphs, protocol):
    unrolled_path, stream_path, images = graphs
    unrolled = unrolled_per_step(unrolled_path, images[:1])
    hand = by_hand(stream_path, np.repeat(images[None, :1], T, axis=0))
    x = images[:1]
    with serve(stream_path, max_delay_ms=1500) as srv:  # the first step waits in the batcher's window
        answers = []

        def first_step() -> None:  # its own client: tritonclient.http's clients stay on the thread that made them
            client = Client(srv, protocol)
            answers.append(client.step(3, x, start=True))
            client.close()

        slow = threading.Thread(target=first_step)
        slow.start()
        second = Client(srv, protocol)
        deadline = time.monotonic() + 1.0
        while srv.service.inflight == 0 and time.monotonic() < deadline:
            time.sleep(0.01)
        with pytest.raises(Refused) as e:
            second.step(3, x)
        slow.join(timeout=30)
        assert e.value.code == {"http": "409", "grpc": "ABORTED"}[protocol]
        assert "sequence 3" in e.value.message and "still running" in e.value.message
        for t in range(1, T):  # the refused step changed nothing: the sequence goes on as if it never came
            answers.append(second.step(3, x, end=t == T - 1))
        check_sequence(answers, unrolled, hand, 0)
        second.close()
        no_5xx(srv)


def test_a_request_without_a_sequence_id_is_refused_and_a_stateless_model_refuses_sequences(graphs, serving_onnx):
    _, stream_path, images = graphs
    body = json.dumps({"inputs": [{"name": INPUT_NAME, "shape": [1, 1, 28, 28], "datatype": "FP32",
                                   "data": images[0].ravel().tolist()}]})
    with serve(stream_path) as srv:
        conn = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=30)
        conn.request("POST", "/v2/models/s/infer", body)
        r = conn.getresponse()
        assert r.status == 400 and "parameters.sequence_id" in json.loads(r.read())["error"]
        bad = json.loads(body)
        bad["parameters"] = {"sequence_id": 5, "sequence_start": "yes"}
        conn.request("POST", "/v2/models/s/infer", json.dumps(bad))
        r = conn.getresponse()
        assert r.status == 400 and "parameters.sequence_start: must be a boolean" in json.loads(r.read())["error"]
        conn.request("GET", "/v2")
        assert "sequence" in json.loads(conn.getresponse().read())["extensions"]
        conn.close()
    with InferenceServer(OrtRuntime(serving_onnx, threads=1), ServeConfig(name="s", port=0)) as srv:
        conn = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=30)
        stateless = json.loads(body)
        stateless["parameters"] = {"sequence_id": 5, "sequence_start": True}
        conn.request("POST", "/v2/models/s/infer", json.dumps(stateless))
        r = conn.getresponse()
        assert r.status == 400 and "sequence extension is not implemented" in json.loads(r.read())["error"]
        conn.close()


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_an_idle_sequence_expires_and_a_later_step_without_start_is_refused(graphs, protocol):
    _, stream_path, images = graphs
    x = images[:1]
    with serve(stream_path, sequence_idle_s=1.0) as srv:
        client = Client(srv, protocol)
        client.step("idle", x, start=True)
        client.step("busy", x, start=True)
        deadline = time.monotonic() + 60  # "busy" keeps stepping, "idle" does not (polled: a loaded machine is slow)
        while metric(srv, "gee_sequences_expired_total") == 0 and time.monotonic() < deadline:
            time.sleep(0.1)
            client.step("busy", x)
        assert metric(srv, "gee_sequences_expired_total") == 1 and metric(srv, "gee_sequences_live") == 1
        with pytest.raises(Refused) as e:
            client.step("idle", x)
        assert e.value.code in ("400", "INVALID_ARGUMENT") and "'idle'" in e.value.message
        assert "expired after 1 s" in e.value.message
        client.step("idle", x, start=True)  # a new start is welcome
        client.close()
        no_5xx(srv)


@pytest.mark.parametrize("protocol", ["http", "stream"])
def test_sigterm_answers_the_step_in_flight_and_exits_0(graphs, protocol):
    _, stream_path, images = graphs
    proc, port, grpc_port = _start_cli(stream_path, "--max-delay-ms", "800", "--grpc-port", "0")
    try:
        srv = type("Addresses", (), {"url": f"127.0.0.1:{port}", "grpc_port": grpc_port})()
        got, sending = [], threading.Event()

        def one_step() -> None:  # the client on its own thread: tritonclient.http's stay where they were made
            client = Client(srv, protocol, model="tiny")  # the name _start_cli serves
            sending.set()
            got.append(client.step(1, images[:1], start=True))
            client.close()

        th = threading.Thread(target=one_step)
        th.start()
        assert sending.wait(30)
        time.sleep(0.3)  # the step waits in the batcher's 800 ms window
        proc.send_signal(signal.SIGTERM)
        th.join(timeout=30)
        assert got and got[0][TOTAL_SPIKE_COUNTS].shape == (1, 4)
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0


# ---- Triton repository --------------------------------------------------------------------------------------

def test_a_streaming_triton_repository_holds_the_membranes_as_implicit_state(graphs, tmp_path):
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2

    model, _ = small_model("smallnet", genes=4, timesteps=T)
    model.model_name = "smallnet"
    export_loaded(model, tmp_path / "repo", fmt="triton", streaming=True, images=torch.rand(4, 1, 28, 28),
                  validation=FAST, max_batch_size=16)
    model_dir = tmp_path / "repo" / "smallnet"
    config = text_format.Parse((model_dir / "config.pbtxt").read_text(), model_config_pb2.ModelConfig())  # as Triton
    graph = onnx.load(str(model_dir / "1" / "model.onnx")).graph
    spec = ModelSpec.from_artefact(model_dir)
    dims = {v.name: [d.dim_value for d in v.type.tensor_type.shape.dim[1:]] for v in graph.input}
    batching = config.sequence_batching
    assert config.HasField("sequence_batching") and not config.HasField("dynamic_batching")
    assert [s.input_name for s in batching.state] == spec.state_inputs and len(batching.state) == 4  # one per LIF
    assert [s.output_name for s in batching.state] == spec.state_outputs
    for state in batching.state:
        assert list(state.dims) == dims[state.input_name] and state.data_type == model_config_pb2.TYPE_FP32
        (initial,) = state.initial_state
        assert initial.zero_data and list(initial.dims) == dims[state.input_name]
    assert [t.name for t in config.input] == [INPUT_NAME]  # the membranes are Triton's, not the client's
    assert [t.name for t in config.output] == [LOGITS, SPIKE_COUNTS]
    assert batching.max_sequence_idle_microseconds == 60_000_000 and batching.oldest.max_candidate_sequences == 1024
    assert config.max_batch_size == 16


# ---- 64 sequences over 16 clients (slow; prints its numbers) --------------------------------------------------

@pytest.mark.slow
def test_64_sequences_over_16_clients_equal_the_unrolled_graph(graphs, tmp_path):
    unrolled_path, stream_path, _ = graphs
    images = np.random.default_rng(2).random((64, 1, 28, 28), dtype=np.float32)
    unrolled = unrolled_per_step(unrolled_path, images)
    hand = by_hand(stream_path, np.repeat(images[None], T, axis=0))
    with serve(stream_path, max_delay_ms=2) as srv:
        start = time.perf_counter()
        answers = run_interleaved(srv, images, ["http", "grpc", "stream", "http"] * 4, per_client=4, seed=7)
        seconds = time.perf_counter() - start
        for i in range(64):
            check_sequence(answers[i], unrolled, hand, i)
        batches = srv.service.stats.as_dict("s", "1")
        no_5xx(srv)
    print(f"\n64 sequences x {T} steps over 16 clients: {64 * T / seconds:.0f} steps/s, "
          f"mean batch {batches['inference_count'] / batches['execution_count']:.2f}, all equal to the unrolled graph")


# ---- bench ---------------------------------------------------------------------------------------------------

def test_bench_of_a_streaming_graph_reports_step_latency_and_concurrent_sequences_beside_the_unrolled_graph(
        graphs, tmp_path):
    from click.testing import CliRunner

    from gee_deploy.cli import cli

    unrolled_path, stream_path, _ = graphs
    r = CliRunner().invoke(cli, ["bench", str(stream_path), str(unrolled_path), "--out", str(tmp_path / "b"),
                                 "--batch-sizes", "1,4", "--min-time", "0", "--threads", "1", "--quiet"])
    assert r.exit_code == 0, r.output
    report = json.loads((tmp_path / "b" / "stream_report.json").read_text())
    assert report["timesteps"] == T and report["step_batch1"]["p50_ms"] > 0
    assert [row["sequences"] for row in report["server"]] == [1, 4] == [row["sequences"] for row in report["graph"]]
    assert [row["batch"] for row in report["unrolled"]] == [1, 4]
    for row in report["server"]:  # whole sequences ran: a multiple of T steps per sequence
        assert row["rounds"] % T == 0 and row["steps_per_s"] > 0
        assert row["sequences_per_s"] == pytest.approx(row["steps_per_s"] / T)
    assert (tmp_path / "b" / "streaming.png").stat().st_size > 1000
    assert "server steps/s" in r.output and "unrolled smp/s" in r.output
    r = CliRunner().invoke(cli, ["bench", str(stream_path), str(stream_path), "--out", str(tmp_path / "c")])
    assert r.exit_code != 0 and "one streaming .onnx" in r.output


# ---- docs/streaming.md --------------------------------------------------------------------------------------

def test_the_streaming_page_examples_run_against_a_served_streaming_export(graphs, capsys):
    """docs/streaming.md's curl, tritonclient HTTP and gRPC-stream examples, as written (ports substituted),
    against a streaming export served as ``demo``."""
    import re
    import shutil
    import subprocess
    from pathlib import Path

    _, stream_path, _ = graphs
    page = (Path(__file__).resolve().parents[1] / "docs" / "streaming.md").read_text(encoding="utf-8")
    bash = re.findall(r"^```bash\n(.*?)^```", page, re.DOTALL | re.MULTILINE)
    python = re.findall(r"^```python\n(.*?)^```", page, re.DOTALL | re.MULTILINE)
    assert len(bash) == 1 and len(python) == 2
    runtime = OrtRuntime(stream_path, threads=1, allow_streaming=True)
    with InferenceServer(runtime, ServeConfig(name="demo", port=0, grpc_port=0, drain_s=1)) as srv:
        def ports(code: str) -> str:
            return code.replace("127.0.0.1:8000", srv.url).replace("127.0.0.1:8001", f"127.0.0.1:{srv.grpc_port}")

        if shutil.which("curl"):
            out = subprocess.run(["bash", "-c", ports(bash[0])], capture_output=True, text=True, timeout=120)
            answers = out.stdout.strip().splitlines()
            assert out.returncode == 0 and len(answers) >= 6, out
            for line in answers[:4]:
                outputs = {o["name"]: o for o in json.loads(line)["outputs"]}
                assert outputs[MEAN_LOGITS]["datatype"] == "BYTES" and outputs[MEAN_LOGITS]["shape"] == [1, 3]
            assert "sequence 42: not live (ended with sequence_end)" in json.loads(answers[4])["error"]
            assert "gee_sequences_ended_total 1.0" in answers
        scope: dict = {"__name__": "streaming_example"}
        for block in python:
            exec(compile(ports(block), "docs/streaming.md", "exec"), scope)
        printed = capsys.readouterr().out.splitlines()
        assert len(printed) == 2 * T and [line.split()[0] for line in printed[T:]] == [str(t) for t in range(T)]
        assert scope["T"] == T and scope["frames"].shape == (T, 1, 1, 28, 28)
        no_5xx(srv)


# ---- the state table on its own ------------------------------------------------------------------------------

def test_the_state_table_restarts_keeps_state_on_failure_and_expires_by_its_clock():
    from gee_deploy.serving.codec import SequenceBusy, SequenceStep, UnknownSequence
    from gee_deploy.serving.metrics import Metrics
    from gee_deploy.serving.sequences import SequenceTable

    now = [0.0]
    table = SequenceTable({"v_in.a": (2,)}, max_sequences=4, idle_s=10.0, metrics=Metrics("m", ["a"]),
                          clock=lambda: now[0])
    one = np.ones((1, 2), np.float32)
    start, step = SequenceStep(1, start=True), SequenceStep(1)
    assert not table.begin(start)["v_in.a"].any()  # zeros at the start
    table.commit(start, one, one, {"v_in.a": one * 3})
    with pytest.raises(UnknownSequence):
        table.begin(SequenceStep(2))
    np.testing.assert_array_equal(table.begin(step)["v_in.a"], one * 3)  # v_out of the last step fed back
    with pytest.raises(SequenceBusy):
        table.begin(step)
    table.abort(step)  # a failed step: the sequence is as it was
    np.testing.assert_array_equal(table.begin(step)["v_in.a"], one * 3)
    summary = table.commit(step, one * 3, one, {"v_in.a": one * 5})
    np.testing.assert_array_equal(summary[MEAN_LOGITS], one * 2)  # mean of 1 and 3
    np.testing.assert_array_equal(summary[TOTAL_SPIKE_COUNTS], one * 2)
    assert not table.begin(start)["v_in.a"].any()  # a restart of a live sequence starts from rest
    summary = table.commit(start, one, one, {"v_in.a": one})
    np.testing.assert_array_equal(summary[TOTAL_SPIKE_COUNTS], one)  # and its summary too
    table.begin(SequenceStep(9, start=True))
    table.abort(SequenceStep(9, start=True))  # a failed first step leaves no sequence behind
    assert list(table.live) == [1]
    now[0] = 10.5
    assert table.expire() == 1 and not table.live
    with pytest.raises(UnknownSequence, match="expired after 10 s"):
        table.begin(step)


# ---- per-step frames: a NIR import with --input sequence --streaming ---------------------------------------

def test_a_nir_import_of_per_step_frames_streams_and_its_served_steps_equal_the_unrolled_import(tmp_path, capsys):
    """Every neuron kind (LIF leaking to v_leak, CubaLIF with its synaptic current, IF, a non-spiking LI readout)
    imported from NIR with ``--input sequence`` twice, unrolled and ``--streaming``: the streaming graph's state
    I/O is one membrane per neuron node plus the CubaLIF's current, its spec says a step takes one frame, and the
    served steps of frame sequences equal the unrolled import's answers."""
    import nir
    from click.testing import CliRunner

    from gee_deploy.cli import cli
    from gee_deploy.export.validate import run_graph
    from gee_deploy.kinds import StepInput

    gen = np.random.default_rng(0)
    full = lambda shape, v: np.full(shape, v, np.float32)  # noqa: E731
    s1, s2 = (4, 8, 8), (4, 4, 4)
    nodes = {
        "input": nir.Input(input_type=np.array([2, 8, 8])),
        "conv": nir.Conv2d(input_shape=(8, 8), weight=gen.normal(0, 1, (4, 2, 3, 3)).astype(np.float32), stride=1,
                           padding=1, dilation=1, groups=1, bias=full(4, 0.2)),
        "lif": nir.LIF(tau=full(s1, 2e-3), r=full(s1, 10.0), v_leak=full(s1, 0.1), v_threshold=full(s1, 0.5),
                       v_reset=full(s1, 0.0)),
        "sum": nir.SumPool2d(kernel_size=np.array([2, 2]), stride=np.array([2, 2]), padding=np.array([0, 0])),
        "cuba": nir.CubaLIF(tau_syn=full(s2, 2e-3), tau_mem=full(s2, 4e-3), r=full(s2, 2.0), v_leak=full(s2, 0.0),
                            v_threshold=full(s2, 0.3), v_reset=full(s2, 0.0), w_in=full(s2, 5.0)),
        "flat": nir.Flatten(input_type={"input": np.array([4, 4, 4])}, start_dim=0, end_dim=-1),
        "lin": nir.Linear(weight=gen.normal(0, 0.3, (16, 64)).astype(np.float32)),
        "if": nir.IF(r=full(16, 1e3), v_threshold=full(16, 1.0), v_reset=full(16, 0.0)),
        "readout": nir.Affine(weight=gen.normal(0, 1, (5, 16)).astype(np.float32), bias=full(5, 0.0)),
        "li": nir.LI(tau=full(5, 3e-3), r=full(5, 1.0), v_leak=full(5, 0.0)),
        "output": nir.Output(output_type=np.array([5])),
    }
    names = list(nodes)
    path = tmp_path / "frames.nir"
    nir.write(path, nir.NIRGraph(nodes=nodes, edges=list(zip(names, names[1:])), metadata={"dt": 1e-3}))
    frames = gen.uniform(0, 1, (6, T, 2, 8, 8)).astype(np.float32)  # [N, T, C, H, W]: the unrolled layout
    np.save(tmp_path / "frames.npy", frames)
    for out, extra in ((tmp_path / "u.onnx", []), (tmp_path / "s.onnx", ["--streaming"])):
        r = CliRunner().invoke(cli, ["export", str(path), "--out", str(out), "-T", str(T), "--input", "sequence", "--images",
                  str(tmp_path / "frames.npy"), "--samples", "6", "--json", *extra])
        assert r.exit_code == 0, r.output
    report = json.loads(r.output)
    assert report["streaming_validation"]["max_spike_count_diff"] == 0
    spec = ModelSpec.from_onnx(tmp_path / "s.onnx")
    assert spec.streaming and spec.step_input == StepInput.FRAMES and spec.input_shape == (2, 8, 8)
    assert spec.state_inputs == ["v_in.lif", "v_in.cuba.i", "v_in.cuba", "v_in.if", "v_in.li"]
    _, (logits, spike_counts) = run_graph(create_session(str(tmp_path / "u.onnx")), frames, 8)
    assert (spike_counts > 0).all(axis=0).all()  # every spiking node fires: the comparison can fail
    hand_logits, hand_spikes = by_hand(tmp_path / "s.onnx", np.ascontiguousarray(frames.transpose(1, 0, 2, 3, 4)))
    with serve(tmp_path / "s.onnx") as srv:
        client = Client(srv, "grpc")
        for i in range(len(frames)):
            answers = [client.step(f"clip-{i}", frames[i, t][None], t == 0, t == T - 1) for t in range(T)]
            for t, a in enumerate(answers):
                np.testing.assert_array_equal(a[SPIKE_COUNTS][0], hand_spikes[t, i])
                np.testing.assert_allclose(a[LOGITS][0], hand_logits[t, i], rtol=0, atol=1e-5)
            np.testing.assert_array_equal(answers[-1][TOTAL_SPIKE_COUNTS][0], spike_counts[i])
            np.testing.assert_allclose(answers[-1][MEAN_LOGITS][0], logits[i], rtol=0, atol=1e-5)
        whole_clip = r"\[1, 2, 8, 8\] \(one step of one sequence; its input is this step's frame\)"
        with pytest.raises(Refused, match=whole_clip):
            client.step("clip-x", frames[0][None], start=True)  # the whole clip is not one step
        client.close()
