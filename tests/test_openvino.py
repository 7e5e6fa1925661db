"""OpenVINO through onnxruntime's OpenVINO execution provider plugin (``--runtime openvino``): the same graph as
onnxruntime's CPU provider computes, in bench, check, serve (tritonclient, HTTP and gRPC) and robustness; one
error line naming the extra when the plugin is missing."""
from __future__ import annotations

import sys

import numpy as np
import pytest

from gee_deploy.data import load_test_arrays
from gee_deploy.ort_session import openvino_unavailable
from gee_deploy.serving.runtimes import OrtRuntime
from gee_deploy.spec import INPUT_NAME, LOGITS, OUTPUT_NAMES, SPIKE_COUNTS
from test_cli import run  # main() as the console script runs it: (exit code, stdout, stderr)

OPENVINO_UNAVAILABLE = openvino_unavailable()  # not installed, or no CPU device offered (the plugin: Intel only)
needs_plugin = pytest.mark.skipif(OPENVINO_UNAVAILABLE is not None, reason=str(OPENVINO_UNAVAILABLE))


@pytest.fixture(scope="module")
def images():
    return load_test_arrays("synthetic", limit=64)[0]


def no_cpu_device(monkeypatch) -> None:
    """The plugin installed but offering no CPU device, as onnxruntime-ep-openvino 1.8 does on a non-Intel CPU:
    the machine itself where it is one, else onnxruntime's device list without the plugin's devices."""
    if OPENVINO_UNAVAILABLE is None:
        import onnxruntime as ort

        devices = ort.get_ep_devices
        monkeypatch.setattr(ort, "get_ep_devices",
                            lambda: [d for d in devices() if d.ep_name != "OpenVINOExecutionProvider"])
    elif "offers no CPU device" not in OPENVINO_UNAVAILABLE:
        pytest.skip(OPENVINO_UNAVAILABLE)


@pytest.mark.parametrize("cause", ["not installed", "no CPU device"])
@pytest.mark.parametrize("command", ["bench", "check", "serve", "robustness"])
def test_an_unusable_plugin_is_one_error_line_saying_why_before_any_work(command, cause, tiny_checkpoint,
                                                                         serving_onnx, tmp_path, capsys, monkeypatch):
    if cause == "not installed":
        monkeypatch.setitem(sys.modules, "onnxruntime_ep_openvino", None)  # import fails as if not installed
    else:
        no_cpu_device(monkeypatch)
    out = tmp_path / "out"
    args = {"bench": ["bench", str(tiny_checkpoint), str(serving_onnx), "--out", str(out), "--runtimes",
                      "torch,openvino"],
            "check": ["check", str(tiny_checkpoint), str(serving_onnx), "--runtime", "openvino"],
            "serve": ["serve", str(serving_onnx), "--port", "0", "--runtime", "openvino"],
            "robustness": ["robustness", str(tiny_checkpoint), str(serving_onnx), "--out", str(out), "--runtime",
                           "openvino"]}[command]
    code, stdout, err = run(args, capsys)
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and lines[0].startswith("error: "), err
    why = "pip install 'gee-deploy[openvino]'" if cause == "not installed" else "offers no CPU device on this"
    assert why in lines[0] and "Traceback" not in err
    assert not out.exists() and stdout == ""


@needs_plugin
def test_openvino_f32_gives_the_cpu_providers_spikes_and_bf16_is_named(serving_onnx, images):
    cpu, ov = OrtRuntime(serving_onnx, "ort-cpu", 1), OrtRuntime(serving_onnx, "openvino", 1)
    assert ov.session.get_providers()[0] == "OpenVINOExecutionProvider"
    assert ov.describe()["precision"] == "f32" and cpu.describe()["precision"] == "f32"
    (want_logits, want_spikes), (logits, spikes) = cpu(images), ov(images)
    assert np.array_equal(spikes, want_spikes)
    np.testing.assert_allclose(logits, want_logits, atol=1e-4)
    bf16 = OrtRuntime(serving_onnx, "openvino-bf16", 1)
    assert bf16.describe()["precision"] == "bf16"
    assert '"INFERENCE_PRECISION_HINT": "bf16"' in bf16.session.get_provider_options()[
        "OpenVINOExecutionProvider"]["load_config"]


@needs_plugin
def test_served_on_openvino_over_http_and_grpc(serving_onnx, images):
    import tritonclient.grpc as grpcclient
    import tritonclient.http as httpclient

    from gee_deploy.serving.config import ServeConfig
    from gee_deploy.serving.server import InferenceServer

    runtime = OrtRuntime(serving_onnx, "openvino", 1)
    x = images[:6]
    want_logits, want_spikes = runtime(x)
    with InferenceServer(runtime, ServeConfig(name="tiny", port=0, grpc_port=0, max_batch=16, max_delay_ms=5,
                                                    drain_s=2)) as srv:
        for client_lib, url in ((httpclient, f"127.0.0.1:{srv.port}"), (grpcclient, f"127.0.0.1:{srv.grpc_port}")):
            client = client_lib.InferenceServerClient(url)
            assert client.is_model_ready("tiny")
            inp = client_lib.InferInput(INPUT_NAME, list(x.shape), "FP32")
            inp.set_data_from_numpy(x)
            result = client.infer("tiny", [inp], outputs=[client_lib.InferRequestedOutput(n) for n in OUTPUT_NAMES])
            assert np.array_equal(result.as_numpy(LOGITS), want_logits)
            assert np.array_equal(result.as_numpy(SPIKE_COUNTS), want_spikes)
            client.close()


@needs_plugin
def test_bench_check_and_robustness_name_the_runtime_and_its_precision(tiny_checkpoint, serving_onnx, tmp_path,
                                                                      capsys):
    from gee_deploy.evaluation.bench import bench_options, run_bench
    from gee_deploy.evaluation.report import write_report

    report = run_bench([tiny_checkpoint, serving_onnx], bench_options(runtimes=["torch", "ort-cpu", "openvino"],
                                                                      batch_sizes=(2,), limit=32, threads=1,
                                                                      min_time=0.01))
    rows = {r["runtime"]: r for r in report["runtimes"]}
    assert rows["openvino"]["precision"] == "f32" and rows["openvino"]["providers"][0] == "OpenVINOExecutionProvider"
    assert rows["openvino"]["parity"]["top1_agreement"] == 1.0
    assert rows["openvino"]["parity"]["spike_count_delta"] == rows["ort-cpu"]["parity"]["spike_count_delta"]
    write_report(report, tmp_path / "bench")
    assert "Runtime openvino: OpenVINOExecutionProvider, CPUExecutionProvider" in (
        tmp_path / "bench" / "report.md").read_text()

    code, out, err = run(["check", str(tiny_checkpoint), str(serving_onnx), "--runtime", "openvino", "--limit", "32",
                          "--min-speedup", "0"], capsys)
    assert code == 0, err
    assert "openvino (f32)" in out and "check passed" in out

    code, out, err = run(["robustness", str(tiny_checkpoint), str(serving_onnx), "--out", str(tmp_path / "rob"),
                          "--runtime", "openvino", "--limit", "32", "--ratios", "0.5", "--quiet"], capsys)
    assert code == 0, err
    assert "| openvino |" in out


def test_triton_repository_names_the_openvino_accelerator_and_serve_reports_it(tiny_checkpoint, serving_onnx,
                                                                               tmp_path, capsys):
    import onnx
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2

    from gee_deploy.export.triton import write_triton_repository
    from gee_deploy.serving.config import ServeConfig
    from gee_deploy.serving.service import ModelService

    code, _, err = run(["export", str(tiny_checkpoint), "--out", str(tmp_path / "repo"), "--format", "triton",
                        "--triton-accelerator", "openvino", "--samples", "16"], capsys)
    assert code == 0, err
    model_dir = next((tmp_path / "repo").iterdir())
    config = text_format.Parse((model_dir / "config.pbtxt").read_text(), model_config_pb2.ModelConfig())  # as Triton
    assert [a.name for a in config.optimization.execution_accelerators.cpu_execution_accelerator] == ["openvino"]
    assert config.platform == "onnxruntime_onnx"
    code, _, err = run(["export", str(tiny_checkpoint), "--out", str(tmp_path / "m.onnx"), "--triton-accelerator",
                        "openvino"], capsys)
    assert code == 2 and "applies to --format triton, not onnx" in err and not (tmp_path / "m.onnx").exists()
    plain = write_triton_repository(onnx.load(str(serving_onnx)), OrtRuntime(serving_onnx, threads=1).spec,
                                    tmp_path / "plain", name="tiny")
    assert "execution_accelerators" not in (plain / "config.pbtxt").read_text()
    if OPENVINO_UNAVAILABLE is None:
        served = ModelService(OrtRuntime(serving_onnx, "openvino", 1), ServeConfig(name="tiny")).model_config()
        assert [a.name for a in served.optimization.execution_accelerators.cpu_execution_accelerator] == ["openvino"]


def test_bench_runs_openvino_only_on_request(serving_onnx):
    from gee_deploy.evaluation.runtimes import default_runtimes

    assert not any(k.startswith("openvino") for k in default_runtimes(serving_onnx))
