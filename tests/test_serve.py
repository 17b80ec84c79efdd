"""The web page's JSON API: models, samples, predictions, and the limits that guard it."""

import io
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from pycocotools import mask as mask_utils
from starlette.testclient import TestClient

from pansight.api import load, train
from pansight.cli import build_parser
from pansight.data.images import image_from_array
from pansight.data.shapes import THING_CLASSES, render_sample
from pansight.errors import ConfigError
from pansight.export import export_onnx
from pansight.models.zoo import build_model
from pansight.serve import (
    LOOPBACK_HOSTS,
    ModelRegistry,
    ServeLimits,
    create_app,
    load_registry,
)
from pansight.serve.encoding import encode_png, map_data_url, result_payload
from pansight.serve.registry import model_name, unique_name
from pansight.structures import Classification, Localization, PanopticMap, Segment, SemanticMap
from pansight.viz import palette

TINY_INSTANCE = {
    "data__num_train": 4,
    "data__num_val": 2,
    "data__image_size": 64,
    "model__min_size": 64,
    "model__max_size": 64,
    "max_iters": 1,
    "batch_size": 2,
    "amp": False,
}


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A Mask R-CNN trained for one iteration on 64 px scenes (it detects, poorly)."""
    out = tmp_path_factory.mktemp("runs") / "tiny_instance"
    train("instance", out=str(out), **TINY_INSTANCE)
    return out / "model.pt"


@pytest.fixture(scope="module")
def client(checkpoint):
    with TestClient(create_app(load_registry([checkpoint]))) as client:
        yield client


def sample_png(index: int = 1, size: int = 96) -> bytes:
    image, _ = render_sample(index, mode="multi", image_size=size, split="val")
    return encode_png(image)


def post_image(client, data: bytes, model: str = "tiny_instance", content_type="image/png"):
    headers = {"Content-Type": content_type}
    return client.post(f"/api/predict?model={model}", content=data, headers=headers)


def test_models_lists_what_is_loaded(client):
    payload = client.get("/api/models").json()
    (model,) = payload["models"]
    assert model == {
        "name": "tiny_instance",
        "task": "instance",
        "backend": "eager",
        "class_names": list(THING_CLASSES),
    }
    assert payload["palette"][:20] == [list(color) for color in palette(20)]
    assert payload["draw_min_score"] == 0.3


def test_sample_is_the_synthetic_world(client):
    answer = client.get("/api/sample?index=3&size=80")
    assert answer.status_code == 200 and answer.headers["content-type"] == "image/png"
    decoded = np.asarray(Image.open(io.BytesIO(answer.content)).convert("RGB"))
    expected, _ = render_sample(3, mode="multi", image_size=80, split="val")
    assert torch.equal(image_from_array(decoded), expected.mul(255).round().div(255))


@pytest.mark.parametrize("query", ["index=-1", "index=x", "size=8", "size=5000"])
def test_sample_rejects_bad_parameters(client, query):
    answer = client.get(f"/api/sample?{query}")
    assert answer.status_code == 400 and "must be a whole number" in answer.json()["error"]


def test_predict_matches_the_model(client, checkpoint):
    data = sample_png()
    answer = post_image(client, data)
    assert answer.status_code == 200
    payload = answer.json()
    assert (payload["model"], payload["task"], payload["height"], payload["width"]) == (
        "tiny_instance",
        "instance",
        96,
        96,
    )
    assert {"queue", "decode", "inference", "encode", "total"} <= set(payload["timing_ms"])
    image = image_from_array(np.asarray(Image.open(io.BytesIO(data)).convert("RGB")))
    expected = load(checkpoint).predict([image])[0]
    detections = payload["result"]["detections"]
    assert payload["result"]["kind"] == "detections" and len(detections) == len(expected) > 0
    boxes = torch.tensor([d["box"] for d in detections])
    torch.testing.assert_close(boxes, expected.boxes, atol=1e-3, rtol=0)
    assert [d["class_name"] for d in detections] == [
        THING_CLASSES[label] for label in expected.labels
    ]
    rles = [{**d["mask"], "counts": d["mask"]["counts"].encode()} for d in detections]
    masks = torch.from_numpy(mask_utils.decode(rles)).permute(2, 0, 1).bool()
    assert torch.equal(masks, expected.masks)


def test_page_and_its_files_come_from_the_package(client):
    page = client.get("/")
    assert page.status_code == 200 and '<script src="/static/app.js"' in page.text
    assert "default-src 'self'" in page.headers["content-security-policy"]
    assert "function decodeMask" in client.get("/static/app.js").text
    assert client.get("/static/style.css").headers["content-type"].startswith("text/css")
    for path in ("/static/../pyproject.toml", "/static/%2e%2e/cli.py", "/static/index.html"):
        answer = client.get(path)
        assert answer.status_code == 404 and "error" in answer.json()


def test_oversized_upload_is_413(checkpoint):
    app = create_app(load_registry([checkpoint]), ServeLimits(max_upload_bytes=1000))
    data = sample_png(size=96)
    assert len(data) > 1000
    with TestClient(app) as client:
        declared = post_image(client, data)
        streamed = client.post(
            "/api/predict?model=tiny_instance",
            content=iter([data[:800], data[800:]]),  # chunked: no Content-Length
            headers={"Content-Type": "image/png"},
        )
    for answer in (declared, streamed):
        assert answer.status_code == 413
        assert "larger than 1000 bytes" in answer.json()["error"]


@pytest.mark.parametrize(
    "data, content_type, message",
    [
        (b"hello", "text/plain", "Content-Type one of image/png"),
        (b"hello", "", "got 'none'"),
        (b"hello", "image/png", "cannot decode"),
        (b"", "image/png", "upload is empty"),
        (sample_png()[:300], "image/png", "cannot decode"),  # truncated
    ],
)
def test_bad_uploads_are_400_with_a_message(client, data, content_type, message):
    answer = post_image(client, data, content_type=content_type)
    assert answer.status_code == 400 and message in answer.json()["error"]


def test_truncated_body_of_a_real_image_is_400(client):
    data = sample_png(size=128)
    answer = post_image(client, data[: len(data) - 40])
    assert answer.status_code == 400 and "truncated" in answer.json()["error"]


def test_too_many_pixels_is_400(checkpoint):
    app = create_app(load_registry([checkpoint]), ServeLimits(max_pixels=64 * 64))
    with TestClient(app) as client:
        answer = post_image(client, sample_png(size=65))
    assert answer.status_code == 400 and "at most 4096 pixels" in answer.json()["error"]


def test_unknown_or_missing_model(client):
    unknown = post_image(client, sample_png(), model="nope")
    assert unknown.status_code == 404
    assert unknown.json()["error"] == "no model named 'nope'; loaded: tiny_instance"
    missing = client.post(
        "/api/predict", content=sample_png(), headers={"Content-Type": "image/png"}
    )
    assert missing.status_code == 400 and "?model=NAME" in missing.json()["error"]


class BlockingPredictor:
    """A classifier that holds its worker until released, and says when it has started."""

    name, task, class_names, backend = "blocking", "classify", ["a", "b"], "test"

    def __init__(self) -> None:
        self.started, self.release = threading.Event(), threading.Event()

    def predict(self, image):
        self.started.set()
        self.release.wait(timeout=60)
        return Classification(1, 0.75, torch.tensor([0.25, 0.75]))


class FailingPredictor(BlockingPredictor):
    name = "failing"

    def predict(self, image):
        raise RuntimeError("out of cheese")


def wait_until(condition, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError("condition not reached")
        time.sleep(0.01)


def test_full_queue_is_503_and_queued_work_still_finishes():
    blocking = BlockingPredictor()
    app = create_app(ModelRegistry([blocking]), ServeLimits(queue_size=1, workers=1))
    data = sample_png(size=32)
    with TestClient(app) as client, ThreadPoolExecutor(2) as pool:
        running = pool.submit(post_image, client, data, "blocking")
        assert blocking.started.wait(timeout=30)
        queued = pool.submit(post_image, client, data, "blocking")
        wait_until(lambda: app.state.work.waiting() == 1)
        refused = post_image(client, data, "blocking")
        blocking.release.set()
        answers = [running.result(), queued.result()]
    assert refused.status_code == 503 and "busy" in refused.json()["error"]
    for answer in answers:
        assert answer.status_code == 200
        assert answer.json()["result"]["class_name"] == "b"


def test_model_failure_is_500_with_its_message():
    with TestClient(create_app(ModelRegistry([FailingPredictor()]))) as client:
        answer = post_image(client, sample_png(size=32), "failing")
    assert answer.status_code == 500
    assert answer.json()["error"] == "model 'failing' failed: out of cheese"


def test_requests_to_other_host_names_are_refused():
    """A loopback server answers loopback names only (no DNS rebinding)."""
    app = create_app(ModelRegistry([FailingPredictor()]), allowed_hosts=LOOPBACK_HOSTS)
    with TestClient(app, base_url="http://127.0.0.1:8000") as client:
        assert client.get("/api/models").status_code == 200
        assert client.get("/api/models", headers={"host": "localhost:8000"}).status_code == 200
        assert client.get("/api/models", headers={"host": "[::1]:8000"}).status_code == 200
        refused = client.get("/api/models", headers={"host": "attacker.example:8000"})
    assert refused.status_code == 400
    assert "failing" not in refused.text


def decode_data_url(url: str) -> np.ndarray:
    import base64

    assert url.startswith("data:image/png;base64,")
    rgb = np.asarray(Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1])))).astype(int)
    return rgb[..., 0] + 256 * rgb[..., 1] + 65536 * rgb[..., 2]


def test_semantic_and_panoptic_maps_round_trip():
    labels = torch.tensor([[0, 1, 255], [2, 2, 1]])
    semantic = result_payload(SemanticMap(labels), ["sky", "grass", "road"])
    assert np.array_equal(decode_data_url(semantic["labels_png"]), labels.numpy())
    assert semantic["classes"][-1] == {"label": 255, "class_name": "class 255", "pixels": 1}
    ids = torch.tensor([[0, 70000], [300, 300]])
    segments = [Segment(70000, 0, True, 1), Segment(300, 2, False, 2, score=0.5)]
    panoptic = result_payload(PanopticMap(ids, segments), ["circle", "sky", "road"])
    assert np.array_equal(decode_data_url(panoptic["ids_png"]), ids.numpy())
    assert panoptic["segments"][1] == {
        "id": 300,
        "label": 2,
        "class_name": "road",
        "is_thing": False,
        "area": 2,
        "score": 0.5,
    }
    assert map_data_url(torch.zeros(1, 1, dtype=torch.long)).startswith("data:image/png")


def test_localization_payload_lists_the_best_classes_first():
    result = Localization(
        2, 0.6, torch.tensor([1.0, 2.0, 30.0, 40.0]), torch.tensor([0.1, 0.3, 0.6])
    )
    payload = result_payload(result, ["a", "b", "c"])
    assert payload["kind"] == "localization" and payload["box"] == [1.0, 2.0, 30.0, 40.0]
    assert [entry["class_name"] for entry in payload["top"]] == ["c", "b", "a"]


def test_models_are_named_after_their_files():
    assert model_name(Path("runs/sem/model.pt")) == "sem"
    assert model_name(Path("weights/yolact.pth")) == "yolact"
    assert unique_name("sem", ["sem", "sem-2"]) == "sem-3"
    with pytest.raises(ConfigError, match="no backend reads .txt"):
        load_registry([Path("model.txt")])
    with pytest.raises(ConfigError, match="two models are named"):
        ModelRegistry([BlockingPredictor(), BlockingPredictor()])


def test_cli_serve_binds_to_localhost_by_default():
    args = build_parser().parse_args(["serve", "a.pt", "b.pt"])
    assert (args.host, args.port, args.checkpoints) == (
        "127.0.0.1",
        8000,
        [Path("a.pt"), Path("b.pt")],
    )


def test_onnx_files_are_served_by_onnxruntime(tmp_path):
    """An exported FCN-8s answers through onnxruntime with the eager model's class map."""
    torch.manual_seed(0)
    model = build_model("fcn8s_r18", ["sky", "grass", "road"], {"input_size": 64}).eval()
    path = export_onnx(model, tmp_path / "fcn.onnx")
    image, _ = render_sample(0, mode="multi", image_size=64, split="val")
    with TestClient(create_app(load_registry([path]))) as client:
        (entry,) = client.get("/api/models").json()["models"]
        answer = post_image(client, encode_png(image), model="fcn")
    assert entry["backend"] == "onnxruntime" and answer.status_code == 200
    (expected,) = model.predict([image])
    got = torch.from_numpy(decode_data_url(answer.json()["result"]["labels_png"]))
    assert (got == expected.labels).float().mean() >= 0.995
