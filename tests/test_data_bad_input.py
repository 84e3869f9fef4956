"""Image folders with awkward or hostile contents: each file is converted (and counted) or refused by name."""

import io
import logging
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from blackbox_vp import data
from blackbox_vp.data import load_folder, load_task

SIZE = (8, 8)


def png_header(width: int, height: int) -> bytes:
    """A PNG whose header claims ``width`` x ``height`` RGB pixels, with almost no data (a bomb's header)."""
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 16))
            + chunk(b"IEND", b""))


def folder(root: Path, files: dict[str, object]) -> Path:
    """Write ``{"class/name": PIL image | bytes}`` under ``root``; a PIL image is saved by the name's suffix."""
    for name, content in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            content.save(path)
    return root


def white(mode: str = "RGB") -> Image.Image:
    return Image.new("RGB", (4, 4), (255, 255, 255)).convert(mode)


def only_image(root: Path, name: str, image) -> np.ndarray:
    """Load a folder of one class holding ``image`` and a white reference; the converted image's pixels."""
    loaded = load_folder(folder(root, {f"a/{name}": image, "a/ref.png": white()}), SIZE)
    assert loaded.images.shape == (2, 8, 8, 3) and loaded.images.dtype == np.uint8
    return loaded.images[[p.name for p in sorted((root / "a").iterdir())].index(name)]


@pytest.mark.parametrize("mode, kind", [
    ("L", data.GREY), ("1", data.GREY), ("P", data.PALETTE), ("CMYK", data.CMYK), ("LAB", data.OTHER_MODE),
])
def test_other_colour_modes_become_rgb_and_are_counted(tmp_path, mode, kind):
    red = Image.new("RGB", (6, 5), (200, 40, 40)) if mode not in ("L", "1") else Image.new("RGB", (6, 5), (0, 0, 0))
    suffix = {"CMYK": ".jpg", "LAB": ".tif"}.get(mode, ".png")
    root = folder(tmp_path, {f"a/x{suffix}": red.convert(mode), "a/y.png": white()})
    loaded = load_folder(root, SIZE)
    assert loaded.conversions == {kind: 1}
    with Image.open(root / f"a/x{suffix}") as saved:
        assert saved.mode == mode
        expected = np.asarray(saved.convert("RGB").resize((8, 8), Image.BILINEAR))
    np.testing.assert_array_equal(loaded.images[0], expected)


def test_sixteen_bit_images_are_scaled_not_clipped(tmp_path):
    deep = np.array([[0, 257, 32896, 65535]] * 4, dtype=np.uint16)  # 0, 1, 128, 255 in 8 bits
    root = folder(tmp_path, {"a/deep.png": Image.fromarray(deep), "a/ref.png": white()})
    with Image.open(root / "a/deep.png") as saved:
        assert saved.mode == "I;16"
    loaded = load_folder(root, (4, 4))
    np.testing.assert_array_equal(loaded.images[0][0, :, 0], [0, 1, 128, 255])  # Pillow's own convert gives 0/255
    assert loaded.conversions == {data.DEEP: 1}


def test_transparency_is_composited_on_white(tmp_path):
    rgba = Image.new("RGBA", (4, 4), (0, 0, 0, 0))  # fully transparent black: white after compositing
    rgba.putpixel((0, 0), (0, 0, 0, 255))  # one opaque black pixel stays black
    half = Image.new("LA", (4, 4), (0, 128))  # half-transparent black over white: mid grey
    palette = Image.new("P", (4, 4), 0)
    palette.putpalette([0, 0, 0] * 256)
    palette.info["transparency"] = bytes([0] + [255] * 255)  # a palette with per-entry alpha (Pillow warns on RGB)
    root = folder(tmp_path, {"a/1.png": rgba, "a/2.png": half, "a/4.png": white()})
    buffer = io.BytesIO()
    palette.save(buffer, format="PNG", transparency=bytes([0] + [255] * 255))
    (tmp_path / "a/3.png").write_bytes(buffer.getvalue())
    loaded = load_folder(root, (4, 4))
    assert loaded.conversions == {data.ALPHA: 3}
    assert loaded.images[0][0, 0].tolist() == [0, 0, 0] and loaded.images[0][3, 3].tolist() == [255, 255, 255]
    assert loaded.images[1].min() >= 126 and loaded.images[1].max() <= 128
    assert loaded.images[2].min() == 255


def test_exif_orientation_is_applied_and_only_the_first_frame_is_read(tmp_path):
    tall = Image.new("RGB", (2, 4), (0, 0, 0))
    tall.paste((255, 255, 255), (0, 0, 2, 2))  # top half white
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to view
    buffer = io.BytesIO()
    tall.save(buffer, format="PNG", exif=exif)
    frames = [Image.new("RGB", (4, 4), colour) for colour in ((0, 0, 0), (255, 255, 255))]
    gif = io.BytesIO()
    frames[0].save(gif, format="GIF", save_all=True, append_images=frames[1:])
    root = folder(tmp_path, {"a/rotated.png": buffer.getvalue(), "a/anim.gif": gif.getvalue()})
    loaded = load_folder(root, (4, 4))
    assert loaded.conversions[data.ROTATED] == 1 and loaded.conversions[data.FRAMES] == 1
    assert loaded.images[0].max() == 0  # the GIF's first frame, black
    rotated = loaded.images[1]  # anim.gif sorts first
    assert rotated[:, -1].min() == 255 and rotated[:, 0].max() == 0  # white top half now on the right


def test_a_one_pixel_image_is_accepted(tmp_path):
    root = folder(tmp_path, {"a/dot.png": Image.new("RGB", (1, 1), (10, 20, 30)), "a/ref.png": white()})
    assert load_folder(root, SIZE).images[0].reshape(-1, 3).tolist() == [[10, 20, 30]] * 64


@pytest.mark.parametrize("name, content, match", [
    ("empty.png", b"", r"empty\.png: the file is empty \(0 bytes\)"),
    ("text.png", b"hello, not an image", r"cannot read image .*text\.png: UnidentifiedImageError"),
    ("random.jpg", bytes(np.random.default_rng(0).integers(0, 256, 2000, dtype=np.uint8)), r"random\.jpg"),
    ("fake.jpg", b"\xff\xd8\xff\xe0" + b"\0" * 100, r"cannot read image .*fake\.jpg"),
], ids=["zero bytes", "text", "random bytes", "a JPEG header and nothing else"])
def test_unreadable_files_are_refused_by_name(tmp_path, name, content, match):
    root = folder(tmp_path, {f"a/{name}": content, "a/ok.png": white()})
    with pytest.raises(ValueError, match=match + r".*Remove or replace the file"):
        load_folder(root, SIZE)


def test_a_truncated_image_is_refused_by_name(tmp_path):
    rng = np.random.default_rng(0)
    for suffix, format in (("png", "PNG"), ("jpg", "JPEG")):
        buffer = io.BytesIO()
        Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(buffer, format=format)
        whole = buffer.getvalue()
        root = folder(tmp_path / suffix, {f"a/cut.{suffix}": whole[: len(whole) // 2], "a/ok.png": white()})
        with pytest.raises(ValueError, match=rf"cannot read image .*cut\.{suffix}: OSError: .*truncated"):
            load_folder(root, SIZE)


def test_decompression_bombs_are_refused_from_the_header(tmp_path):
    """Neither file is decoded: the sizes come from the header (a real decode would need 1.2 GB and 300 MB)."""
    with pytest.raises(ValueError, match=r"bomb\.png: Image size \(400000000 pixels\) exceeds limit .*decompression "
                                         r"bomb.*over the limit of 89,478,485 pixels"):
        load_folder(folder(tmp_path / "a", {"c/bomb.png": png_header(20000, 20000)}), SIZE)
    with pytest.raises(ValueError, match=r"big\.png: it is 10000 x 10000 = 100,000,000 pixels, over the limit of "
                                         r"89,478,485 \(a guard against decompression bombs\)"):
        load_folder(folder(tmp_path / "b", {"c/big.png": png_header(10000, 10000)}), SIZE)
    root = folder(tmp_path / "c", {"c/small.png": white()})
    with pytest.raises(ValueError, match=r"small\.png: it is 4 x 4 = 16 pixels, over the limit of 15"):
        load_folder(root, SIZE, max_pixels=15)
    assert len(load_folder(root, SIZE, max_pixels=16)) == 1


def test_floating_point_images_are_refused(tmp_path):
    root = folder(tmp_path, {"a/float.tif": Image.fromarray(np.zeros((4, 4), np.float32))})
    with pytest.raises(ValueError, match=r"float\.tif: it holds floating-point pixels \(mode F\)"):
        load_folder(root, SIZE)


def test_non_image_and_hidden_files_are_skipped_and_counted(tmp_path):
    root = folder(tmp_path, {"a/one.png": white(), "a/two.PNG": white(), "a/notes.txt": b"hi", "a/.DS_Store": b"\0",
                             "a/._one.png": b"AppleDouble", "b/three.jpeg": white(), ".git/config": b"x",
                             "b/sub.png/inner.png": white()})
    (root / "README.md").write_text("top-level files are not classes")
    loaded = load_folder(root, SIZE)
    assert loaded.classes == ["a", "b"] and loaded.labels.tolist() == [0, 0, 1]
    assert loaded.conversions == {data.HIDDEN: 3, data.SKIPPED: 2, data.ONE_IMAGE: 1}


def test_empty_classes_and_folders_are_clear_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_folder(tmp_path / "missing", SIZE)
    with pytest.raises(ValueError, match="has no class subfolders"):
        load_folder(folder(tmp_path / "flat", {"x.png": white()}), SIZE)
    (tmp_path / "e" / "empty").mkdir(parents=True)
    folder(tmp_path / "e", {"full/x.png": white()})
    with pytest.raises(ValueError, match=r"class folder .*empty holds no images .*add some or remove the folder"):
        load_folder(tmp_path / "e", SIZE)
    folder(tmp_path / "t", {"full/x.png": white(), "docs/readme.txt": b"no images here"})
    with pytest.raises(ValueError, match=r"class folder .*docs holds no images"):
        load_task(str(tmp_path / "t"), SIZE)


def test_a_class_with_one_image_is_loaded_with_a_warning(tmp_path, caplog):
    root = folder(tmp_path, {"many/1.png": white(), "many/2.png": white(), "single/1.png": white("L")})
    with caplog.at_level(logging.WARNING, logger="blackbox_vp.data"):
        loaded = load_folder(root, SIZE)
    assert loaded.labels.tolist() == [0, 0, 1]
    assert loaded.conversions == {data.ONE_IMAGE: 1, data.GREY: 1}
    assert "class 'single'" in caplog.text and "single image" in caplog.text
    assert loaded.subset(np.array([2])).conversions == loaded.conversions
