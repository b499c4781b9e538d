"""The web app over real HTTP on loopback: the masks `predict` writes, limits, bad uploads, load."""

from __future__ import annotations

import base64
import http.client
import io
import json
import struct
import urllib.request
import zlib
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from PIL import Image

from segpipe.inference.prediction import PredictOptions, predict_paths
from segpipe.data.tiling import Tiling
from segpipe.serving.app import create_app
from segpipe.serving.client import post_image
from segpipe.serving.service import ModelService
from tests.helpers import png_bytes, random_image, running_server, tiny_checkpoint

LIMIT = 300_000  # bytes of request body the test server accepts


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    root = tmp_path_factory.mktemp("serve")
    checkpoint = tiny_checkpoint(root / "best.pt")  # 2 classes, 32 px input
    with running_server(create_app(ModelService(checkpoint), LIMIT)) as url:
        yield {"url": url, "checkpoint": checkpoint, "root": root}


def get_json(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=30) as response:
        return json.loads(response.read())


def predict_file(server, data: bytes, name: str, **options) -> bytes:
    """What `python -m pipeline predict` writes for the image `data`."""
    folder = server["root"] / f"{name}-{len(options)}-{hash(tuple(sorted(options.items())))}"
    (folder / "in").mkdir(parents=True, exist_ok=True)
    (folder / "in" / f"{name}.png").write_bytes(data)
    report = predict_paths(server["checkpoint"], [str(folder / "in")], folder / "out", PredictOptions(**options), progress=False)
    assert report.ok
    return (folder / "out" / f"{name}.png").read_bytes()


def assert_still_serving(server) -> None:
    status, _, body = post_image(server["url"], png_bytes(random_image(20, 20)))
    assert status == 200 and body.startswith(b"\x89PNG")


def test_health_names_the_model_its_classes_and_colours(server):
    health = get_json(server["url"] + "/health")
    assert health["status"] == "ok"
    assert health["classes"] == [{"name": "background", "colour": "#000000"}, {"name": "lesion", "colour": "#ff0000"}]
    assert (health["image_size"], health["tile"], health["max_upload_bytes"]) == (32, 32, LIMIT)


@pytest.mark.parametrize(
    ("fields", "options"),
    [
        ({}, {}),  # auto: as predict without --tile, for a model trained on whole images
        ({"tile": "on"}, {"tile": 32, "overlap": 0.25}),
        ({"tile": "off", "tta": "true"}, {"tta": True}),
        ({"tile": "on", "tta": "true"}, {"tile": 32, "overlap": 0.25, "tta": True}),
    ],
)
def test_predict_returns_the_mask_file_predict_writes(server, fields, options):
    data = png_bytes(random_image(45, 70, seed=4))
    status, headers, body = post_image(server["url"], data, "photo.png", fields)
    assert status == 200 and headers["content-type"] == "image/png"
    assert headers["x-segpipe-tiled"] == ("true" if options.get("tile") else "false")
    assert body == predict_file(server, data, "photo", **options)


def test_patch_trained_models_are_tiled_by_default_whatever_their_size_as_predict_does(tmp_path):
    checkpoint = tiny_checkpoint(tmp_path / "best.pt", train={"sampling": "patches", "patch_size": 16, "patch_scale": 1.0})
    service = ModelService(checkpoint)
    assert service.describe()["tiles_by_default"] and service.tiling == Tiling(16, 0.25, batch_size=8)
    large, small = random_image(20, 30, seed=5), random_image(12, 16, seed=5)
    assert service.predict(png_bytes(large), "large").tiled
    # Smaller than a window: one window of its own extent, at the training scale, as `predict` does.
    assert service.predict(png_bytes(small), "small").tiled
    assert not service.predict(png_bytes(large), "large", tile="off").tiled


def test_details_give_the_page_mask_colour_layer_and_shares(server):
    data = png_bytes(random_image(40, 50, seed=6))
    status, _, body = post_image(server["url"], data, fields={"tile": "off"}, path="/predict/details")
    assert status == 200
    details = json.loads(body)
    mask_png = base64.b64decode(details["mask_png"])
    assert mask_png == predict_file(server, data, "details")
    labels = np.asarray(Image.open(io.BytesIO(mask_png))) // 255  # 0/255 -> class ids
    assert (details["width"], details["height"]) == (50, 40)
    assert details["shares"] == pytest.approx([np.mean(labels == 0), np.mean(labels == 1)])
    layer = np.asarray(Image.open(io.BytesIO(base64.b64decode(details["layer_png"]))))
    assert layer.shape == (40, 50, 4)
    assert np.array_equal(layer[..., 3] > 0, labels == 1)
    assert (layer[labels == 1][:, :3] == [255, 0, 0]).all()


def png_header_only(width: int, height: int) -> bytes:
    """A PNG that claims width x height RGB pixels and holds none: a decompression bomb's header."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 64))


BAD_UPLOADS = {
    "not an image": (b"just some text", r"not an image"),
    "truncated": (png_bytes(random_image(60, 60))[:-300], r"truncated"),
    "decompression bomb": (png_header_only(30_000, 30_000), r"decompression bomb"),
    "empty": (b"", r"is empty"),
}


@pytest.mark.parametrize("kind", sorted(BAD_UPLOADS))
def test_bad_upload_is_400_with_a_reason_and_the_server_keeps_serving(server, kind):
    data, reason = BAD_UPLOADS[kind]
    status, _, body = post_image(server["url"], data, "upload.png")
    assert status == 400
    assert reason in json.loads(body)["detail"]
    assert_still_serving(server)


def test_unknown_tile_mode_is_400(server):
    status, _, body = post_image(server["url"], png_bytes(random_image(20, 20)), fields={"tile": "sometimes"})
    assert status == 400 and "tile must be one of auto, on, off" in json.loads(body)["detail"]
    assert_still_serving(server)


def test_upload_over_the_limit_is_413_by_its_declared_length_before_the_body_is_sent(server):
    host, port = server["url"].removeprefix("http://").split(":")
    connection = http.client.HTTPConnection(host, int(port), timeout=30)
    connection.putrequest("POST", "/predict")
    connection.putheader("Content-Type", "multipart/form-data; boundary=x")
    connection.putheader("Content-Length", str(10**9))  # a gigabyte that never comes
    connection.endheaders()
    response = connection.getresponse()
    assert response.status == 413 and "upload limit" in json.loads(response.read())["detail"]
    connection.close()
    assert_still_serving(server)


def test_chunked_upload_without_a_length_is_cut_off_at_the_limit(server):
    def chunks():  # no Content-Length: the server must count while reading
        for _ in range(100):
            yield b"\0" * 10_000

    status, _, body = post_image(server["url"], chunks())
    assert status == 413 and "upload limit" in json.loads(body)["detail"]
    assert_still_serving(server)


def test_static_files_come_from_a_fixed_list_and_load_nothing_from_the_internet(server):
    for path in ("/", "/static/app.js", "/static/style.css"):
        with urllib.request.urlopen(server["url"] + path, timeout=30) as response:
            text = response.read().decode()
            assert response.headers["Content-Security-Policy"].startswith("default-src 'self'")
        assert "http://" not in text and "https://" not in text and "//cdn" not in text
    for path in ("/static/..%2f..%2fapp.py", "/static/index.html.bak", "/static/%2e%2e%2fservice.py"):
        with pytest.raises(urllib.error.HTTPError) as error:
            urllib.request.urlopen(server["url"] + path, timeout=30)
        assert error.value.code == 404


def test_twenty_concurrent_requests_all_get_their_own_correct_mask(server):
    images = [png_bytes(random_image(30 + i % 7, 40 + i % 5, seed=100 + i)) for i in range(20)]
    expected = [predict_file(server, data, f"load{i}") for i, data in enumerate(images)]
    with ThreadPoolExecutor(max_workers=20) as pool:
        answers = list(pool.map(lambda data: post_image(server["url"], data), images))
    assert [status for status, _, _ in answers] == [200] * 20
    assert [body for _, _, body in answers] == expected


@pytest.fixture(scope="module")
def small_server(tmp_path_factory):
    """A server that takes images of at most 100 pixels."""
    checkpoint = tiny_checkpoint(tmp_path_factory.mktemp("small") / "best.pt")
    with running_server(create_app(ModelService(checkpoint), LIMIT, max_pixels=100)) as url:
        yield url


def test_an_image_over_max_pixels_is_413_from_its_header_naming_the_limit_and_its_size(small_server):
    # A header that claims 1000 x 1000 pixels and holds none: decoding it would fail as truncated
    # (400), so a 413 shows the size was read from the header, before any decoding.
    status, _, body = post_image(small_server, png_header_only(1000, 1000), "huge.png")
    assert status == 413
    detail = json.loads(body)["detail"]
    assert "'huge.png' is 1000 x 1000 = 1,000,000 pixels" in detail
    assert "limit of 100 pixels (serve.max_pixels)" in detail
    status, _, _ = post_image(small_server, png_bytes(random_image(10, 11)), "over.png")  # 110 pixels
    assert status == 413
    status, _, body = post_image(small_server, png_bytes(random_image(10, 10)), "at.png")  # 100 pixels: allowed
    assert status == 200 and body.startswith(b"\x89PNG")


def test_health_names_the_checkpoint_by_its_file_name_only(server):
    with urllib.request.urlopen(server["url"] + "/health", timeout=30) as response:
        text = response.read().decode()
    assert json.loads(text)["model"] == "best.pt"
    assert str(server["root"]) not in text and str(server["root"]).replace("/", "\\/") not in text
