"""Image preparation for the requests, as the paper's ``read_image`` + FiftyOne describe node do it
(docs/protocol/pipeline.md §1.2, gotchas 5, 15, 17).

* **Down-scaling:** only when H·W is *strictly* greater than ``png_max_pixels``; ratio
  ``sqrt(max / (H·W))``, new size ``int(ratio·W) × int(ratio·H)`` (truncated), ``cv2.INTER_AREA``.
* **Original bytes when nothing changed:** the describe node runs with ``leave_images_in_place`` and
  ``keep_image_name``, so an image that needs no resize goes to the provider as its original file bytes
  (a JPEG stays that JPEG, byte for byte).
* **Re-encoding otherwise, in the format of the original extension:** cv2 picks the encoder from the
  file name, so a resized ``.jpg`` is re-encoded as JPEG (cv2's default quality 95; the PNG compression
  level is ignored) and a ``.png`` as PNG with ``png_compression_level`` (docs/protocol/pipeline.md gotcha 17). Arrays (no file
  name) are encoded as PNG, like the paper's timestamp-named copies.
* **Decoding** follows ``cv2.imread(path, cv2.IMREAD_COLOR)``: 3-channel BGR uint8 for any input —
  grayscale is replicated, alpha is dropped (not composited), palette images are expanded, 16-bit
  samples are scaled to 8 bits, CMYK JPEGs are converted by libjpeg — and the **EXIF orientation is
  applied** (OpenCV's default). Original bytes that are sent unchanged keep their EXIF tag as is, as
  in the paper. Formats cv2 cannot read (e.g. GIF) are decoded with Pillow instead.
* ``ensure_rgb`` (ours, for the vision servers, docs/protocol/pipeline.md gotcha 15): also re-encode files that are not plain
  8-bit RGB JPEG/PNG (grayscale, RGBA, palette, 16-bit, CMYK), so the server always receives 3 channels.
  Off by default for the VLM path, where the paper sent such files unchanged.
* **Data URIs are always labelled** ``image/jpeg`` (docs/protocol/pipeline.md gotcha 5), even for PNG bytes.

``PreparedImage.sha256`` is the hash of the bytes actually sent (the response cache keys on it).

>>> import numpy as np
>>> prepared = prepare_image(np.zeros((4, 4, 3), np.uint8), png_max_pixels=4)
>>> (prepared.width, prepared.height, prepared.resized, prepared.encoding)
(2, 2, True, 'png')
>>> prepared.data_uri.startswith("data:image/jpeg;base64,")
True
"""

from __future__ import annotations

import base64
import hashlib
import io
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import cv2
import numpy as np
from PIL import Image

DATA_URI_PREFIX = "data:image/jpeg;base64,"
DEFAULT_PNG_MAX_PIXELS = 1920 * 1080

_JPEG_SUFFIXES = (".jpg", ".jpeg", ".jpe")
#: Extensions cv2 encodes itself (when the original file has one, the re-encoded copy keeps it).
_CV2_SUFFIXES = _JPEG_SUFFIXES + (".png", ".webp", ".bmp", ".tif", ".tiff")
_URL = re.compile(r"^https?://\S+$")
_BASE64 = re.compile(r"^[A-Za-z0-9+/]*={0,2}$")


class ImageError(ValueError):
    """An image that cannot be read or prepared."""


#: How a prepared image is encoded ("original": the file's own bytes).
ImageEncoding = Literal["original", "jpeg", "png", "webp", "bmp", "tiff"]


@dataclass(frozen=True)
class PreparedImage:
    """The bytes that go to a server, and what was done to get them."""

    data: bytes
    #: sha256 (hex) of ``data``, the bytes actually sent.
    sha256: str
    width: int
    height: int
    source_width: int
    source_height: int
    resized: bool
    #: ``original``: the file's own bytes; else the encoder used for the re-encoded copy.
    encoding: ImageEncoding

    @property
    def reencoded(self) -> bool:
        return self.encoding != "original"

    @property
    def data_uri(self) -> str:
        """``data:image/jpeg;base64,…`` — the form nimbro_api puts into the ``image_url`` part."""
        return data_uri(self.data)

    @property
    def base64(self) -> str:
        """Plain base64 without prefix — the form the vision servers take (docs/protocol/pipeline.md §3)."""
        return base64.b64encode(self.data).decode("ascii")


def data_uri(data: bytes) -> str:
    """Base64 data URI, always labelled ``image/jpeg`` whatever the bytes are (docs/protocol/pipeline.md gotcha 5)."""
    return DATA_URI_PREFIX + base64.b64encode(data).decode("ascii")


def to_image_url(value: str) -> str:
    """nimbro_api's rule for an ``image_url`` string that is not a local path: web URLs and
    ``data:image/jpeg;base64,`` URIs pass unchanged, bare base64 gets the JPEG prefix, any other data
    URI (e.g. ``image/png``) is rejected (docs/protocol/pipeline.md §1.2)."""
    if _URL.fullmatch(value) or value.startswith(DATA_URI_PREFIX):
        return value
    if value.startswith("data:"):
        raise ImageError(f"unsupported data URI {value[:30]!r}…: only {DATA_URI_PREFIX!r} is accepted")
    if value and len(value) % 4 == 0 and _BASE64.fullmatch(value):
        return DATA_URI_PREFIX + value
    raise ImageError("an image URL must be http(s), a data:image/jpeg;base64 URI or bare base64")


def downscaled_size(width: int, height: int, png_max_pixels: int | None) -> tuple[int, int] | None:
    """The paper's target size, or None when no down-scaling applies (H·W ≤ max, or max is None).

    >>> downscaled_size(3840, 2160, 2073600)   # ratio sqrt(2073600 / 8294400) = 0.5
    (1920, 1080)
    >>> downscaled_size(1920, 1080, 2073600) is None   # exactly max: not resized (strictly greater)
    True
    """
    if png_max_pixels is None or width * height <= png_max_pixels:
        return None
    ratio = math.sqrt(png_max_pixels / (width * height))
    return int(ratio * width), int(ratio * height)


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _to_bgr_uint8(array: np.ndarray) -> np.ndarray:
    """An array as 3-channel BGR uint8 (arrays follow the cv2 convention: BGR / BGRA)."""
    if array.dtype == np.uint16:
        array = (array >> 8).astype(np.uint8)  # cv2's own 16 → 8 bit reduction
    elif array.dtype != np.uint8:
        raise ImageError(f"image arrays must be uint8 or uint16, got {array.dtype}")
    if array.ndim == 2 or (array.ndim == 3 and array.shape[2] == 1):
        return cv2.cvtColor(array.reshape(array.shape[:2]), cv2.COLOR_GRAY2BGR)
    if array.ndim == 3 and array.shape[2] == 3:
        return np.ascontiguousarray(array)
    if array.ndim == 3 and array.shape[2] == 4:
        return cv2.cvtColor(array, cv2.COLOR_BGRA2BGR)
    raise ImageError(f"unsupported image array shape {array.shape}")


def _decode(data: bytes, what: str) -> np.ndarray:
    """Decode like ``cv2.imread(path, cv2.IMREAD_COLOR)``; Pillow for formats cv2 lacks."""
    if not data:
        # cv2.imdecode raises cv2.error (not None) on an empty buffer: a 0-byte file must be an ImageError
        # like any unreadable image, so that it fails alone (issue 8, bad inputs).
        raise ImageError(f"cannot decode image {what}: the file is empty (0 bytes)")
    try:
        image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    except cv2.error:
        image = None
    if image is not None:
        return image
    try:
        with Image.open(io.BytesIO(data)) as pil:
            rgb = np.asarray(pil.convert("RGB"))
    except Exception as exc:  # noqa: BLE001 - any decoder failure means the same to the caller
        raise ImageError(f"cannot decode image {what}: {exc}") from None
    return cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)


def _encode(image: np.ndarray, suffix: str, png_compression_level: int) -> tuple[bytes, ImageEncoding]:
    suffix = suffix.lower() if suffix.lower() in _CV2_SUFFIXES else ".png"
    # The compression level only for PNG: other encoders ignore it, but OpenCV warns on every call
    # ("imencodeWithMetadata An unsupported key(16)"), once per re-encoded JPEG in the run logs.
    params = [cv2.IMWRITE_PNG_COMPRESSION, png_compression_level] if suffix == ".png" else []
    ok, buffer = cv2.imencode(suffix, image, params)
    if not ok:
        raise ImageError(f"cv2 failed to encode an image as {suffix}")
    encodings: dict[str, ImageEncoding] = {
        ".jpg": "jpeg", ".jpeg": "jpeg", ".jpe": "jpeg", ".png": "png", ".webp": "webp", ".bmp": "bmp",
        ".tif": "tiff", ".tiff": "tiff",
    }  # fmt: skip
    return buffer.tobytes(), encodings[suffix]


def _is_plain_rgb(pil: Image.Image, data: bytes) -> bool:
    """An 8-bit, 3-channel JPEG or PNG. Pillow reports 16-bit RGB PNGs as mode "RGB" too, so the PNG
    bit depth is read from the IHDR chunk (byte 24 of the file)."""
    if pil.mode != "RGB":
        return False
    if pil.format == "JPEG":
        return True
    return pil.format == "PNG" and len(data) > 24 and data[24] == 8


def prepare_image(
    source: str | Path | bytes | np.ndarray,
    png_max_pixels: int | None = DEFAULT_PNG_MAX_PIXELS,
    *,
    png_compression_level: int = 2,
    ensure_rgb: bool = False,
    name: str | None = None,
) -> PreparedImage:
    """The bytes to send for ``source`` (a file path, a file's bytes, or a BGR/gray/BGRA array).

    ``name`` gives the file name (its extension picks the re-encoding format) for bytes or arrays.
    """
    if isinstance(source, np.ndarray):
        image = _to_bgr_uint8(source)
        height, width = image.shape[:2]
        target = downscaled_size(width, height, png_max_pixels)
        if target is not None:
            image = cv2.resize(image, target, interpolation=cv2.INTER_AREA)
        data, encoding = _encode(image, Path(name).suffix if name else ".png", png_compression_level)
        return PreparedImage(
            data,
            sha256_hex(data),
            image.shape[1],
            image.shape[0],
            width,
            height,
            target is not None,
            encoding,
        )

    if isinstance(source, (str, Path)):
        path = Path(source)
        try:
            original = path.read_bytes()
        except OSError as exc:
            raise ImageError(f"cannot read image file {path}: {exc}") from None
        what, suffix = str(path), path.suffix
    elif isinstance(source, (bytes, bytearray, memoryview)):
        original = bytes(source)
        what, suffix = (name or "<bytes>"), (Path(name).suffix if name else "")
    else:
        raise ImageError(f"unsupported image source {type(source).__name__}")

    try:
        with Image.open(io.BytesIO(original)) as pil:
            width, height = pil.size  # H·W does not depend on the EXIF orientation
            plain = _is_plain_rgb(pil, original)
            pil_format = pil.format
    except Exception:  # noqa: BLE001 - fall back to cv2 for anything Pillow cannot identify
        decoded = _decode(original, what)
        height, width = decoded.shape[:2]
        plain, pil_format = False, None

    target = downscaled_size(width, height, png_max_pixels)
    if target is None and not (ensure_rgb and not plain):
        return PreparedImage(original, sha256_hex(original), width, height, width, height, False, "original")

    image = _decode(original, what)
    height, width = image.shape[:2]
    target = downscaled_size(width, height, png_max_pixels)
    if target is not None:
        image = cv2.resize(image, target, interpolation=cv2.INTER_AREA)
    if not suffix:
        suffix = ".jpg" if pil_format == "JPEG" else ".png"
    data, encoding = _encode(image, suffix, png_compression_level)
    return PreparedImage(
        data, sha256_hex(data), image.shape[1], image.shape[0], width, height, target is not None, encoding
    )
