"""decode_image: every colour mode, every way a file can be bad, names that try to escape."""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from histo_core.errors import ImageError
from histo_core.image_decode import decode_image, display_name, safe_filename, to_png_bytes

RNG = np.random.default_rng(0)
RGB = RNG.integers(0, 256, (20, 30, 3), dtype=np.uint8)


def encode(im: Image.Image, fmt: str = "PNG", **kw) -> bytes:
    buf = io.BytesIO()
    im.save(buf, format=fmt, **kw)
    return buf.getvalue()


def png_header_only(width: int, height: int) -> bytes:
    """A valid PNG signature + IHDR declaring width x height RGB, and no pixel data."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IEND", b"")


# -- colour modes ------------------------------------------------------------------------------------


def test_rgb_png_roundtrips_exactly():
    out = decode_image(encode(Image.fromarray(RGB)), "tile.png")
    assert out.array.dtype == np.uint8 and out.array.shape == (20, 30, 3)
    np.testing.assert_array_equal(out.array, RGB)
    assert out.notes == [] and out.mode_note == "PNG, RGB" and out.name == "tile.png"


def test_grayscale_stays_one_channel():
    gray = RGB[..., 0]
    out = decode_image(encode(Image.fromarray(gray, "L")), "g.png")
    assert out.array.shape == (20, 30, 1)
    np.testing.assert_array_equal(out.array[..., 0], gray)


def test_rgba_is_composited_on_white():
    rgba = np.zeros((4, 4, 4), np.uint8)
    rgba[..., 0] = 200
    rgba[0, 0, 3] = 255  # opaque red-ish
    rgba[0, 1, 3] = 0  # fully transparent -> white
    rgba[0, 2, 3] = 128  # half
    out = decode_image(encode(Image.fromarray(rgba, "RGBA")), "a.png")
    assert out.array.shape == (4, 4, 3)
    assert tuple(out.array[0, 0]) == (200, 0, 0)
    assert tuple(out.array[0, 1]) == (255, 255, 255)
    assert abs(int(out.array[0, 2, 1]) - 127) <= 1  # green: 0 * a + 255 * (1 - a)
    assert any("white" in n for n in out.notes)


def test_la_is_composited_to_grayscale():
    la = np.stack([np.full((3, 3), 50, np.uint8), np.full((3, 3), 0, np.uint8)], -1)
    out = decode_image(encode(Image.fromarray(la, "LA")), "la.png")
    assert out.array.shape == (3, 3, 1) and int(out.array.max()) == 255


def test_palette_converted_to_rgb():
    pal = Image.fromarray(RGB).convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
    out = decode_image(encode(pal), "p.png")
    np.testing.assert_array_equal(out.array, np.asarray(pal.convert("RGB")))
    assert any("palette" in n for n in out.notes)


def test_cmyk_jpeg_converted_to_rgb():
    cmyk = Image.fromarray(RGB).convert("CMYK")
    out = decode_image(encode(cmyk, "JPEG", quality=95), "c.jpg")
    assert out.array.shape == (20, 30, 3) and "CMYK" in out.mode_note
    assert any("CMYK" in n for n in out.notes)
    assert np.abs(out.array.astype(int) - RGB.astype(int)).mean() < 40  # lossy, but the same picture


def test_one_bit_image():
    bw = Image.fromarray((RGB[..., 0] > 128).astype(np.uint8) * 255).convert("1")
    out = decode_image(encode(bw), "bw.png")
    assert out.array.shape == (20, 30, 1) and set(np.unique(out.array)) <= {0, 255}


def test_16bit_tiff_without_declared_bits_uses_the_container_range():
    twelve_bit = (np.arange(600).reshape(20, 30) * 6).astype(np.uint16)  # max 3594 < 4095
    out = decode_image(encode(Image.fromarray(twelve_bit), "TIFF"), "cam.tif")
    assert out.array.shape == (20, 30, 1)
    assert int(out.array.max()) == round(3594 / 65535 * 255)  # the same scale for every 16-bit image
    assert any("16-bit" in n for n in out.notes)


def with_sbit(png: bytes, bits: int) -> bytes:
    """A PNG with an sBIT chunk (declared significant bits) inserted after IHDR."""
    import struct
    import zlib

    chunk = b"sBIT" + bytes([bits])
    sbit = struct.pack(">I", 1) + chunk + struct.pack(">I", zlib.crc32(chunk) & 0xFFFFFFFF)
    ihdr_end = 8 + 8 + 13 + 4
    return png[:ihdr_end] + sbit + png[ihdr_end:]


def test_16bit_png_with_declared_significant_bits_scales_by_them():
    twelve_bit = (np.arange(600).reshape(20, 30) * 6).astype(np.uint16)  # a 12-bit camera image
    png = with_sbit(encode(Image.fromarray(twelve_bit)), 12)
    out = decode_image(png, "cam.png")
    assert int(out.array.max()) == round(3594 / 4095 * 255)
    assert any("12-bit" in n for n in out.notes)
    plain = decode_image(encode(Image.fromarray(twelve_bit)), "cam.png")
    assert int(plain.array.max()) == round(3594 / 65535 * 255)


def test_16bit_png_full_range():
    full = np.linspace(0, 65535, 600).reshape(20, 30).astype(np.uint16)
    out = decode_image(encode(Image.fromarray(full)), "deep.png")
    assert int(out.array.min()) == 0 and int(out.array.max()) == 255
    assert any("16-bit" in n for n in out.notes)


def test_16bit_values_are_not_stretched():
    small = np.full((5, 5), 200, np.uint16)
    out = decode_image(encode(Image.fromarray(small), "TIFF"), "s.tif")
    assert int(out.array.max()) == 1  # 200 / 65535: a dark 16-bit image stays dark


def test_float_tiff_in_unit_range_and_arbitrary_range():
    unit = np.linspace(0, 1, 600, dtype=np.float32).reshape(20, 30)
    out = decode_image(encode(Image.fromarray(unit, "F"), "TIFF"), "f.tif")
    assert int(out.array.max()) == 255 and int(out.array.min()) == 0
    wide = np.linspace(-50, 5000, 600, dtype=np.float32).reshape(20, 30)
    out = decode_image(encode(Image.fromarray(wide, "F"), "TIFF"), "w.tif")
    assert int(out.array.min()) == 0 and int(out.array.max()) == 255
    assert any("stretched" in n for n in out.notes)


def test_float_tiff_with_nan():
    arr = np.linspace(0, 1, 16, dtype=np.float32).reshape(4, 4)
    arr[0, 0] = np.nan
    out = decode_image(encode(Image.fromarray(arr, "F"), "TIFF"), "nan.tif")
    assert out.array.shape == (4, 4, 1) and any("NaN" in n for n in out.notes)
    all_nan = np.full((4, 4), np.nan, np.float32)
    with pytest.raises(ImageError, match="allnan.tif: every pixel is NaN"):
        decode_image(encode(Image.fromarray(all_nan, "F"), "TIFF"), "allnan.tif")


def test_48bit_rgb_tiff_reduced_with_note():
    tifffile = pytest.importorskip("tifffile")
    buf = io.BytesIO()
    tifffile.imwrite(buf, RGB.astype(np.uint16) * 257, photometric="rgb")
    out = decode_image(buf.getvalue(), "rgb48.tif")
    np.testing.assert_array_equal(out.array, RGB)
    assert any("16-bit-per-channel" in n for n in out.notes)


def test_animated_gif_uses_first_frame_with_note():
    frames = [Image.fromarray(np.full((8, 8, 3), v, np.uint8)) for v in (10, 200, 90)]
    buf = io.BytesIO()
    frames[0].save(buf, format="GIF", save_all=True, append_images=frames[1:], duration=50)
    out = decode_image(buf.getvalue(), "anim.gif")
    assert out.array.shape == (8, 8, 3) and abs(int(out.array.mean()) - 10) <= 2
    assert any("holds 3" in n and "first" in n for n in out.notes)


def test_multipage_tiff_uses_first_page_with_note():
    pages = [Image.fromarray(np.full((6, 6, 3), v, np.uint8)) for v in (30, 220)]
    buf = io.BytesIO()
    pages[0].save(buf, format="TIFF", save_all=True, append_images=pages[1:])
    out = decode_image(buf.getvalue(), "stack.tif")
    assert int(out.array.mean()) == 30 and any("pages" in n for n in out.notes)


def test_exif_orientation_applied():
    im = Image.fromarray(RGB)  # 30 wide, 20 high
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    out = decode_image(encode(im, "JPEG", exif=exif.tobytes()), "phone.jpg")
    assert out.array.shape[:2] == (30, 20)
    assert any("EXIF" in n for n in out.notes)


def test_extension_is_not_trusted():
    out = decode_image(encode(Image.fromarray(RGB), "JPEG"), "really_a_jpeg.png")
    assert out.mode_note.startswith("JPEG")
    assert any("JPEG image although its name ends in .png" in n for n in out.notes)


# -- bad files ---------------------------------------------------------------------------------------


def test_empty_file():
    with pytest.raises(ImageError, match=r"^empty\.png: empty file \(0 bytes\)"):
        decode_image(b"", "empty.png")


def test_text_renamed_png():
    with pytest.raises(ImageError, match=r"^notes\.png: not an image \(it is a text file"):
        decode_image(b"patient,label\n1,TUM\n", "notes.png")


def test_random_bytes():
    with pytest.raises(ImageError, match=r"^junk\.tif: not an image \(cannot identify image file"):
        decode_image(bytes(range(256)) * 4, "junk.tif")


@pytest.mark.parametrize("fmt,ext,cut", [("PNG", "png", 0.5), ("JPEG", "jpg", 0.3), ("TIFF", "tif", 0.6)])
def test_truncated_files(fmt, ext, cut):
    data = encode(Image.fromarray(RNG.integers(0, 256, (64, 64, 3), dtype=np.uint8)), fmt)
    with pytest.raises(ImageError, match=rf"^cut\.{ext}: damaged or truncated"):
        decode_image(data[: int(len(data) * cut)], f"cut.{ext}")


def test_decompression_bomb_refused_from_header():
    with pytest.raises(
        ImageError, match=r"bomb\.png: refused, the image declares 2,500,000,000 pixels.*decompression bomb"
    ):
        decode_image(png_header_only(50000, 50000), "bomb.png")


def test_pixel_limit_is_configurable(monkeypatch):
    monkeypatch.setenv("HISTO_MAX_IMAGE_PIXELS", "500")
    data = encode(Image.fromarray(RGB))  # 600 pixels: between our limit and twice it
    with pytest.raises(ImageError, match=r"20x30|30x20|600 pixels"):
        decode_image(data, "big.png")
    monkeypatch.setenv("HISTO_MAX_IMAGE_PIXELS", "1000")
    assert decode_image(data, "big.png").array.shape == (20, 30, 3)


# -- names ---------------------------------------------------------------------------------------------


def test_names_with_paths_and_control_characters():
    assert display_name("../../etc/passwd.png") == "passwd.png"
    assert display_name("C:\\Users\\x\\tile.tif") == "tile.tif"
    assert display_name("evil\x00\x1b\u202ename.png") == "evil name.png"
    assert display_name("") == "unnamed"
    assert display_name("...hidden.png") == "hidden.png"
    assert len(display_name("a" * 500 + ".png")) <= 120 and display_name("a" * 500 + ".png").endswith(".png")
    assert safe_filename("../x/ü tile (1).png", "_cam.png") == "u_tile_1_cam.png"
    assert safe_filename("\x00", ".png") == "unnamed.png"
    assert safe_filename("日本.png", ".png") == "image.png"


def test_error_message_uses_sanitised_name():
    with pytest.raises(ImageError) as info:
        decode_image(b"", "../secret/\x1b[2Jx.png")
    assert str(info.value).startswith("[2Jx.png: empty file")


def test_to_png_bytes_roundtrip():
    gray = RGB[..., :1]
    np.testing.assert_array_equal(decode_image(to_png_bytes(gray), "g.png").array, gray)
