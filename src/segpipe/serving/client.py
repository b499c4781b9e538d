"""A small client for the serve API (standard library only): what `curl -F image=@photo.jpg` does.

    status, headers, mask = post_image("http://127.0.0.1:8000", Path("photo.jpg").read_bytes())
"""

from __future__ import annotations

import secrets
import urllib.error
import urllib.request
from collections.abc import Iterable, Mapping


def multipart_body(fields: Mapping[str, str], file_field: str, filename: str, data: bytes) -> tuple[bytes, str]:
    """A multipart/form-data body with text `fields` and one file; returns (body, content type)."""
    boundary = f"segpipe-{secrets.token_hex(12)}"
    parts = []
    for key, value in fields.items():
        parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="{key}"\r\n\r\n{value}\r\n'.encode())
    parts.append(
        f'--{boundary}\r\nContent-Disposition: form-data; name="{file_field}"; filename="{filename}"\r\n'
        "Content-Type: application/octet-stream\r\n\r\n".encode()
    )
    parts += [data, f"\r\n--{boundary}--\r\n".encode()]
    return b"".join(parts), f"multipart/form-data; boundary={boundary}"


def post_image(
    url: str,
    data: bytes | Iterable[bytes],
    filename: str = "image.png",
    fields: Mapping[str, str] | None = None,
    path: str = "/predict",
    timeout: float = 120,
) -> tuple[int, dict[str, str], bytes]:
    """POST an image to `url` + `path`; returns (status, headers, body), errors included.

    `data` may be the image's bytes, or an iterable of raw body chunks (sent chunked, with no
    Content-Length) when `fields` is None and `filename` is ignored.
    """
    if isinstance(data, (bytes, bytearray)):
        body, content_type = multipart_body(fields or {}, "image", filename, bytes(data))
        request = urllib.request.Request(url.rstrip("/") + path, data=body, method="POST")
    else:
        request = urllib.request.Request(url.rstrip("/") + path, data=data, method="POST")
        content_type = "application/octet-stream"
    request.add_header("Content-Type", content_type)
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as error:
        return error.code, dict(error.headers), error.read()
