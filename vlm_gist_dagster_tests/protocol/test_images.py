"""Image preparation (docs/protocol/pipeline.md §1.2): strict down-scaling rule, original bytes, re-encoding by
extension, 3-channel conversion, JPEG-labelled data URIs."""

from __future__ import annotations

import base64
import hashlib
import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from vlm_gist_dagster.protocol.images import (
    DATA_URI_PREFIX,
    ImageError,
    data_uri,
    downscaled_size,
    prepare_image,
    to_image_url,
)

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
JPEG_SOI = b"\xff\xd8"


def _png_bytes(array_rgb: np.ndarray, mode: str | None = None) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array_rgb, mode=mode).save(buffer, "PNG")
    return buffer.getvalue()


def _decode_rgb(data: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(data)) as pil:
        return np.asarray(pil.convert("RGB"))


def test_downscaled_size_by_hand() -> None:
    # 3840·2160 = 8 294 400 > 2 073 600; ratio sqrt(0.25) = 0.5 → 1920 × 1080
    assert downscaled_size(3840, 2160, 2_073_600) == (1920, 1080)
    # exactly the limit is not resized (strictly greater test)
    assert downscaled_size(1920, 1080, 2_073_600) is None
    # 7·5 = 35 > 20; ratio sqrt(20/35) = 0.75593; int(5.2915) = 5, int(3.7796) = 3
    assert downscaled_size(7, 5, 20) == (5, 3)
    # 641·480 = 307 680 > 307 200; ratio sqrt(307200/307680) = 0.999220; int(640.50) = 640, int(479.63) = 479
    assert downscaled_size(641, 480, 307_200) == (640, 479)
    assert downscaled_size(10_000, 10_000, None) is None


def test_area_interpolation_averages_blocks(tmp_path: Path) -> None:
    # 4×4 gray levels, max 4 px → ratio sqrt(4/16) = 0.5 → 2×2, INTER_AREA = mean of each 2×2 block:
    # top-left (0+4+8+12)/4 = 6, top-right (40+44+48+52)/4 = 46,
    # bottom-left (100+104+108+112)/4 = 106, bottom-right (200+204+208+212)/4 = 206
    gray = np.array(
        [[0, 4, 40, 44], [8, 12, 48, 52], [100, 104, 200, 204], [108, 112, 208, 212]], dtype=np.uint8
    )
    rgb = np.repeat(gray[:, :, None], 3, axis=2)
    path = tmp_path / "blocks.png"
    path.write_bytes(_png_bytes(rgb))
    prepared = prepare_image(path, png_max_pixels=4)
    assert (prepared.width, prepared.height, prepared.source_width, prepared.source_height) == (2, 2, 4, 4)
    assert prepared.resized and prepared.encoding == "png" and prepared.data.startswith(PNG_SIGNATURE)
    assert _decode_rgb(prepared.data)[:, :, 0].tolist() == [[6, 46], [106, 206]]
    assert prepared.sha256 == hashlib.sha256(prepared.data).hexdigest()


def test_no_resize_sends_the_original_bytes(tmp_path: Path) -> None:
    path = tmp_path / "four.png"
    path.write_bytes(_png_bytes(np.full((4, 4, 3), 9, np.uint8)))
    prepared = prepare_image(path, png_max_pixels=16)  # 16 px, not > 16
    assert prepared.data == path.read_bytes()
    assert prepared.encoding == "original" and not prepared.resized and not prepared.reencoded
    assert prepared.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    assert prepare_image(path, png_max_pixels=None).data == path.read_bytes()


def test_resized_jpg_stays_jpeg(tmp_path: Path) -> None:
    path = tmp_path / "photo.jpg"
    Image.new("RGB", (8, 6), (200, 30, 30)).save(path, "JPEG")
    prepared = prepare_image(path, png_max_pixels=12)  # 48 > 12, ratio 0.5 → 4 × 3
    assert (prepared.width, prepared.height) == (4, 3)
    assert prepared.encoding == "jpeg" and prepared.data.startswith(JPEG_SOI)
    with Image.open(io.BytesIO(prepared.data)) as pil:
        assert (pil.format, pil.size) == ("JPEG", (4, 3))


def test_real_vlm_gist_images(vlm_gist_dir: Path) -> None:
    # 00012.jpg is the one 3840×2160 image: halved to 1920×1080 and re-encoded as JPEG (docs/protocol/pipeline.md §1.2)
    big = prepare_image(vlm_gist_dir / "data" / "00012.jpg")
    assert (big.source_width, big.source_height, big.width, big.height) == (3840, 2160, 1920, 1080)
    assert big.encoding == "jpeg" and big.data.startswith(JPEG_SOI)
    # 00001.jpg is 1920×1080 = exactly 2 073 600 px: sent as its original bytes
    path = vlm_gist_dir / "data" / "00001.jpg"
    small = prepare_image(path)
    assert small.encoding == "original" and small.data == path.read_bytes()
    assert (small.width, small.height) == (1920, 1080)


def test_grayscale_file_sent_unchanged_unless_rgb_is_required(tmp_path: Path) -> None:
    path = tmp_path / "gray.png"
    path.write_bytes(_png_bytes(np.full((2, 3), 7, np.uint8), mode="L"))
    assert prepare_image(path).data == path.read_bytes()  # the paper sends the file as it is
    converted = prepare_image(path, ensure_rgb=True)
    assert converted.encoding == "png" and not converted.resized
    with Image.open(io.BytesIO(converted.data)) as pil:
        assert pil.mode == "RGB" and np.asarray(pil).tolist() == [[[7, 7, 7]] * 3] * 2


def test_rgba_and_16_bit_files_become_three_channel_uint8(tmp_path: Path) -> None:
    rgba = np.zeros((2, 2, 4), np.uint8)
    rgba[..., 0], rgba[..., 3] = 200, 0  # fully transparent red: alpha is dropped, not composited
    path = tmp_path / "alpha.png"
    path.write_bytes(_png_bytes(rgba, mode="RGBA"))
    out = prepare_image(path, ensure_rgb=True)
    assert _decode_rgb(out.data).tolist() == [[[200, 0, 0]] * 2] * 2

    deep = tmp_path / "deep.png"
    Image.fromarray(np.full((2, 2), 0x1234, np.uint16)).save(deep)  # 16-bit gray, 0x1234 >> 8 = 0x12 = 18
    out = prepare_image(deep, ensure_rgb=True)
    assert _decode_rgb(out.data).tolist() == [[[18, 18, 18]] * 2] * 2


def test_array_inputs() -> None:
    bgr = np.zeros((5, 7, 3), np.uint8)
    bgr[..., 0] = 255  # blue in cv2's BGR order
    out = prepare_image(bgr, png_max_pixels=20)  # 35 > 20 → 5 × 3 (see test_downscaled_size_by_hand)
    assert (out.width, out.height, out.encoding) == (5, 3, "png")
    assert _decode_rgb(out.data)[0, 0].tolist() == [0, 0, 255]
    gray = prepare_image(np.full((2, 2), 50, np.uint8))
    assert _decode_rgb(gray.data).tolist() == [[[50, 50, 50]] * 2] * 2
    bgra = np.dstack([np.full((2, 2), v, np.uint8) for v in (10, 20, 30, 0)])
    assert _decode_rgb(prepare_image(bgra).data)[0, 0].tolist() == [30, 20, 10]
    with pytest.raises(ImageError, match="float"):
        prepare_image(np.zeros((2, 2, 3), np.float32))
    with pytest.raises(ImageError, match="shape"):
        prepare_image(np.zeros((2, 2, 2), np.uint8))


def test_exif_orientation_is_applied_when_decoding(tmp_path: Path) -> None:
    path = tmp_path / "rotated.jpg"
    exif = Image.Exif()
    exif[274] = 6  # "rotate 90° clockwise to display": stored 4 wide × 2 high, shown 2 wide × 4 high
    Image.new("RGB", (4, 2), (0, 0, 0)).save(path, "JPEG", exif=exif.tobytes())
    out = prepare_image(path, png_max_pixels=4)
    # decoded as 2 × 4 (8 px > 4); ratio sqrt(4/8) = 0.7071; int(2·0.7071) = 1, int(4·0.7071) = 2
    assert (out.source_width, out.source_height, out.width, out.height) == (2, 4, 1, 2)


def test_bytes_input_keeps_its_format() -> None:
    buffer = io.BytesIO()
    Image.new("RGB", (8, 6), (1, 2, 3)).save(buffer, "JPEG")
    out = prepare_image(buffer.getvalue(), png_max_pixels=12)
    assert out.encoding == "jpeg" and (out.width, out.height) == (4, 3)
    with pytest.raises(ImageError, match="cannot decode"):
        prepare_image(b"definitely not an image")


def test_data_uri_is_always_jpeg_labelled() -> None:
    png = _png_bytes(np.zeros((1, 1, 3), np.uint8))
    uri = data_uri(png)
    assert uri.startswith("data:image/jpeg;base64,")
    assert base64.b64decode(uri[len(DATA_URI_PREFIX) :]) == png


def test_to_image_url_rules() -> None:
    assert to_image_url("https://example.org/a.jpg") == "https://example.org/a.jpg"
    assert to_image_url("data:image/jpeg;base64,AAAA") == "data:image/jpeg;base64,AAAA"
    assert to_image_url("AAAA") == "data:image/jpeg;base64,AAAA"
    with pytest.raises(ImageError, match="unsupported data URI"):
        to_image_url("data:image/png;base64,AAAA")
    with pytest.raises(ImageError):
        to_image_url("/some/local/path.jpg")


def test_ensure_rgb_reencodes_16_bit_rgb_png():
    """Pillow reports a 16-bit RGB PNG as mode "RGB"; it must still be re-encoded to 8 bits."""
    import cv2
    import numpy as np

    from vlm_gist_dagster.protocol.images import prepare_image

    ok, png = cv2.imencode(".png", np.full((4, 4, 3), 40000, np.uint16))
    assert ok
    prepared = prepare_image(png.tobytes(), None, ensure_rgb=True, name="x.png")
    assert prepared.encoding != "original"
    decoded = cv2.imdecode(np.frombuffer(prepared.data, np.uint8), cv2.IMREAD_UNCHANGED)
    assert decoded.dtype == np.uint8 and decoded.shape == (4, 4, 3)
    # 40000 / 65535 * 255 = 155.6 → 155 or 156 depending on the converter's rounding
    assert int(decoded[0, 0, 0]) in (155, 156)
