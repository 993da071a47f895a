"""Frame sources and image loading, on real files written by the tests (no camera)."""

from __future__ import annotations

import struct
import sys
import zlib
from pathlib import Path

import cv2
import numpy as np
import pytest

from inspector.capture import (
    ArraySource,
    CameraSource,
    CameraSpec,
    FolderSource,
    FolderSpec,
    FrameSource,
    GenICamSource,
    GenICamSpec,
    VideoSource,
    VideoSpec,
    image_files,
    iter_image_files,
    load_image,
    open_source,
    parse_source,
    redact_url,
)
from inspector.capture.genicam import _genicam_to_bgr
from inspector.errors import CameraNotFound, CaptureError, FrameDecodeError


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    crc = zlib.crc32(kind + data) & 0xFFFFFFFF
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)


def _palette_png(indices: np.ndarray, palette: list[tuple[int, int, int]]) -> bytes:
    """A colour-type-3 (palette) PNG by hand: OpenCV cannot write one."""
    height, width = indices.shape
    raw = b"".join(b"\x00" + row.astype(np.uint8).tobytes() for row in indices)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 3, 0, 0, 0))
        + _png_chunk(b"PLTE", b"".join(bytes(rgb) for rgb in palette))
        + _png_chunk(b"IDAT", zlib.compress(raw))
        + _png_chunk(b"IEND", b"")
    )


def _write(path: Path, image: np.ndarray, ext: str = ".png") -> Path:
    ok, data = cv2.imencode(ext, image)
    assert ok
    path.write_bytes(data.tobytes())
    return path


# ---- load_image -------------------------------------------------------------------------------


def test_load_image_colour_png_round_trips(tmp_path: Path, rng: np.random.Generator) -> None:
    image = rng.integers(0, 256, (56, 70, 3), dtype=np.uint8)
    loaded = load_image(_write(tmp_path / "a.png", image))
    assert loaded.dtype == np.uint8 and loaded.shape == (56, 70, 3)
    np.testing.assert_array_equal(loaded, image)


def test_load_image_grayscale_becomes_three_equal_channels(tmp_path: Path) -> None:
    gray = np.tile(np.arange(56, dtype=np.uint8) * 4, (56, 1))
    loaded = load_image(_write(tmp_path / "g.png", gray))
    assert loaded.shape == (56, 56, 3)
    for channel in range(3):
        np.testing.assert_array_equal(loaded[:, :, channel], gray)


def test_load_image_16bit_is_scaled_by_full_range(tmp_path: Path) -> None:
    deep = np.full((56, 56), 257 * 100, np.uint16)
    deep[0, 0] = 65535
    loaded = load_image(_write(tmp_path / "d.png", deep))
    assert loaded.dtype == np.uint8
    assert loaded[1, 1].tolist() == [100, 100, 100]
    assert loaded[0, 0].tolist() == [255, 255, 255]


def test_load_image_drops_alpha(tmp_path: Path, rng: np.random.Generator) -> None:
    bgra = rng.integers(0, 256, (56, 56, 4), dtype=np.uint8)
    loaded = load_image(_write(tmp_path / "rgba.png", bgra))
    np.testing.assert_array_equal(loaded, bgra[:, :, :3])


def test_load_image_palette_png(tmp_path: Path) -> None:
    indices = np.zeros((28, 28), np.uint8)
    indices[:, 14:] = 1
    path = tmp_path / "palette.png"
    path.write_bytes(_palette_png(indices, [(255, 0, 0), (0, 0, 255)]))   # RGB red, blue
    loaded = load_image(path)
    assert loaded.shape == (28, 28, 3)
    assert loaded[0, 0].tolist() == [0, 0, 255]     # BGR red
    assert loaded[0, 27].tolist() == [255, 0, 0]    # BGR blue


def test_load_image_applies_exif_orientation(tmp_path: Path) -> None:
    image = np.zeros((56, 84, 3), np.uint8)
    image[:, :14] = 255                                        # a white band on the left
    ok, data = cv2.imencode(".jpg", image)
    assert ok
    # APP1 Exif segment with one IFD entry: Orientation (0x0112) = 6, "rotate 90 degrees clockwise".
    tiff = b"II*\x00" + struct.pack("<I", 8) + struct.pack("<H", 1)
    tiff += struct.pack("<HHIHH", 0x0112, 3, 1, 6, 0)
    tiff += struct.pack("<I", 0)
    app1 = b"\xff\xe1" + struct.pack(">H", 2 + 6 + len(tiff)) + b"Exif\x00\x00" + tiff
    path = tmp_path / "phone.jpg"
    path.write_bytes(data.tobytes()[:2] + app1 + data.tobytes()[2:])
    loaded = load_image(path)
    assert loaded.shape == (84, 56, 3)                         # upright: taller than wide
    assert loaded[:14].mean() > 200 and loaded[20:].mean() < 30   # the band is now at the top


def test_load_image_reads_unicode_paths(tmp_path: Path, rng: np.random.Generator) -> None:
    image = rng.integers(0, 256, (56, 56, 3), dtype=np.uint8)
    folder = tmp_path / "Prüfteile ø"
    folder.mkdir()
    np.testing.assert_array_equal(load_image(_write(folder / "teil_ä.png", image)), image)


def test_load_image_trusts_content_over_extension(tmp_path: Path, rng: np.random.Generator) -> None:
    image = rng.integers(0, 256, (56, 56, 3), dtype=np.uint8)
    png_named_jpg = _write(tmp_path / "really_a_png.jpg", image, ".png")
    np.testing.assert_array_equal(load_image(png_named_jpg), image)


@pytest.mark.parametrize(
    ("name", "content", "match"),
    [
        ("empty.png", b"", r"empty\.png: image file is empty \(0 bytes\)"),
        ("text.png", b"this is not an image at all, just text", r"text\.png: not a decodable image"),
    ],
)
def test_load_image_refuses_bad_bytes(tmp_path: Path, name: str, content: bytes, match: str) -> None:
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(FrameDecodeError, match=match) as info:
        load_image(path)
    assert info.value.path == path


def test_load_image_refuses_truncated_jpeg(tmp_path: Path, rng: np.random.Generator) -> None:
    ok, data = cv2.imencode(".jpg", rng.integers(0, 256, (56, 56, 3), dtype=np.uint8))
    path = tmp_path / "cut.jpg"
    path.write_bytes(data.tobytes()[: len(data) // 2])
    with pytest.raises(FrameDecodeError, match=r"cut\.jpg: not a decodable image .*truncated"):
        load_image(path)


@pytest.mark.parametrize("shape", [(1, 1), (1, 1, 3), (13, 56, 3)])
def test_load_image_refuses_tiny_images(tmp_path: Path, shape: tuple[int, ...]) -> None:
    path = _write(tmp_path / "tiny.png", np.zeros(shape, np.uint8))
    with pytest.raises(FrameDecodeError, match=r"tiny\.png: image is \d+x\d+ pixels; at least 14 px"):
        load_image(path)


def test_load_image_refuses_huge_images_from_the_header(tmp_path: Path) -> None:
    # Only a header claiming 20000 x 20000 px: refused before any decoding is attempted.
    ihdr = struct.pack(">IIBBBBB", 20_000, 20_000, 8, 2, 0, 0, 0)
    header = b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr)
    path = tmp_path / "bomb.png"
    path.write_bytes(header + b"\x00" * 64)
    match = r"bomb\.png: image is 20000x20000 pixels \(400 MP\), over the 100 MP"
    with pytest.raises(FrameDecodeError, match=match):
        load_image(path)


@pytest.mark.parametrize("ext", [".jpg", ".bmp", ".tif", ".webp"])
def test_header_dims_match_decoded_size(tmp_path: Path, rng: np.random.Generator, ext: str) -> None:
    from inspector.capture.decode import _header_dims

    image = rng.integers(0, 256, (42, 70, 3), dtype=np.uint8)
    data = _write(tmp_path / f"x{ext}", image, ext).read_bytes()
    assert _header_dims(data) == (70, 42)


def test_load_image_missing_file(tmp_path: Path) -> None:
    with pytest.raises(FrameDecodeError, match=r"nothing\.png: cannot read image file"):
        load_image(tmp_path / "nothing.png")


# ---- folder source ------------------------------------------------------------------------------


def test_folder_source_natural_order_recursive_and_filtered(tmp_path: Path, rng: np.random.Generator) -> None:
    img = rng.integers(0, 256, (56, 56, 3), dtype=np.uint8)
    for rel in ["img2.png", "img10.png", "sub/img1.jpg", ".hidden/img0.png", "notes.txt", "img3.PNG"]:
        path = tmp_path / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        if rel.endswith(".txt"):
            path.write_text("not an image")
        else:
            _write(path, img, ".png")
    with FolderSource(FolderSpec(path=tmp_path)) as source:
        names = []
        while (frame := source.read()) is not None:
            names.append(Path(frame.path or "").relative_to(tmp_path).as_posix())
            assert frame.source == str(tmp_path)
        assert source.read() is None
    assert names == ["img2.png", "img3.PNG", "img10.png", "sub/img1.jpg"]


def test_folder_source_loops(image_folder: Path) -> None:
    with FolderSource(FolderSpec(path=image_folder, loop=True)) as source:
        frames = [source.read() for _ in range(9)]
    assert [f.frame_id for f in frames if f] == list(range(9))
    assert [Path(f.path or "").name for f in frames if f][6:] == ["img_000.png", "img_001.png", "img_002.png"]


def test_folder_source_skips_past_a_bad_file(image_folder: Path) -> None:
    (image_folder / "img_001.png").write_bytes(b"")
    with FolderSource(FolderSpec(path=image_folder)) as source:
        assert source.read() is not None
        with pytest.raises(FrameDecodeError, match=r"img_001\.png: image file is empty"):
            source.read()
        frame = source.read()
    assert frame is not None and frame.frame_id == 2 and Path(frame.path or "").name == "img_002.png"


def test_folder_source_missing_and_empty(tmp_path: Path) -> None:
    with pytest.raises(CaptureError, match=r"nowhere: folder not found"):
        FolderSource(FolderSpec(path=tmp_path / "nowhere")).open()
    (tmp_path / "empty").mkdir()
    with pytest.raises(CaptureError, match=r"empty: no image files found"):
        FolderSource(FolderSpec(path=tmp_path / "empty")).open()
    with pytest.raises(CaptureError, match="not open; call open"):
        FolderSource(FolderSpec(path=tmp_path)).read()


def test_folder_source_single_file(image_folder: Path) -> None:
    with FolderSource(FolderSpec(path=image_folder / "img_003.png")) as source:
        assert source.read() is not None
        assert source.read() is None


def test_paced_source_interrupt_ends_the_wait(image_folder: Path) -> None:
    source = FolderSource(FolderSpec(path=image_folder, fps=0.01))   # one frame per 100 s
    with source:
        assert source.read() is not None                             # the first is due at once
        source.interrupt()
        assert source.read() is None


# ---- video source --------------------------------------------------------------------------------


@pytest.fixture
def video_file(tmp_path: Path) -> Path:
    """A 5-frame MJPG .avi, 64x48, frame i filled with grey level 40 * (i + 1)."""
    path = tmp_path / "clip.avi"
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 10.0, (64, 48))
    assert writer.isOpened(), "OpenCV cannot write MJPG here"
    for i in range(5):
        writer.write(np.full((48, 64, 3), 40 * (i + 1), np.uint8))
    writer.release()
    return path


def test_video_source_reads_every_frame(video_file: Path) -> None:
    with VideoSource(VideoSpec(path=video_file)) as source:
        frames = []
        while (frame := source.read()) is not None:
            frames.append(frame)
    assert [f.frame_id for f in frames] == [0, 1, 2, 3, 4]
    assert all(f.image_bgr.shape == (48, 64, 3) and f.image_bgr.dtype == np.uint8 for f in frames)
    levels = [float(f.image_bgr.mean()) for f in frames]
    np.testing.assert_allclose(levels, [40, 80, 120, 160, 200], atol=6)   # MJPG is lossy
    assert frames[0].path == str(video_file)


def test_video_source_loops(video_file: Path) -> None:
    with VideoSource(VideoSpec(path=video_file, loop=True)) as source:
        frames = [source.read() for _ in range(12)]
    assert all(f is not None for f in frames)
    assert abs(float(frames[5].image_bgr.mean()) - 40) < 6   # type: ignore[union-attr]


def test_video_source_errors(tmp_path: Path) -> None:
    with pytest.raises(CaptureError, match=r"missing\.avi: video file not found"):
        VideoSource(VideoSpec(path=tmp_path / "missing.avi")).open()
    junk = tmp_path / "junk.avi"
    junk.write_bytes(b"not a video" * 10)
    with pytest.raises(CaptureError, match=r"junk\.avi: cannot be opened as a video"):
        VideoSource(VideoSpec(path=junk)).open()


# ---- cameras ----------------------------------------------------------------------------------------


def test_redact_url() -> None:
    assert redact_url("rtsp://admin:s3cret@10.0.0.5:554/stream1") == "rtsp://***@10.0.0.5:554/stream1"
    assert redact_url("http://cam.local/mjpg") == "http://cam.local/mjpg"
    assert redact_url("0") == "0"
    assert redact_url("rtsp://admin:p@ss@10.0.0.5/s") == "rtsp://***@10.0.0.5/s", "an '@' in the password"
    assert redact_url("http://cam.local/snap@2x.jpg") == "http://cam.local/snap@2x.jpg", "'@' in the path only"
    assert redact_url("camera rtsp://u:pw@h/1 and rtsp://v:pw2@h/2") == "camera rtsp://***@h/1 and rtsp://***@h/2"


def test_camera_source_names_hide_credentials() -> None:
    assert CameraSource(CameraSpec(device="rtsp://admin:s3cret@host/x")).name == "rtsp://***@host/x"
    assert CameraSource(CameraSpec(device=2)).name == "camera 2"
    assert CameraSource(CameraSpec(device="1")).name == "camera 1"
    assert CameraSource(CameraSpec()).is_live


def test_camera_source_not_found(tmp_path: Path) -> None:
    source = CameraSource(CameraSpec(device=str(tmp_path / "no_such_stream.mjpg")))
    with pytest.raises(CameraNotFound, match="could not be opened; check the address"):
        source.open()
    with pytest.raises(CaptureError, match="is not open; call open"):
        source.read()
    source.close()


def test_genicam_without_harvesters_says_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "harvesters", None)     # as if not installed
    monkeypatch.setitem(sys.modules, "harvesters.core", None)
    with pytest.raises(CaptureError, match=r"pip install 'inspector\[genicam\]'"):
        GenICamSource(GenICamSpec()).open()


def test_genicam_offers_a_software_trigger_once_open() -> None:
    from inspector.capture import SoftwareTriggerSource

    source = GenICamSource(GenICamSpec())
    assert isinstance(source, SoftwareTriggerSource)      # triggered mode takes one frame per PLC trigger
    with pytest.raises(CaptureError, match="is not open; call open"):
        source.arm_software_trigger()
    with pytest.raises(CaptureError, match="is not open; call open"):
        source.read_triggered(0.5)


def test_genicam_without_producer_says_what_to_set(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("GENICAM_GENTL64_PATH", raising=False)
    with pytest.raises(CaptureError, match="GENICAM_GENTL64_PATH"):
        GenICamSource(GenICamSpec())._cti_file()
    with pytest.raises(CaptureError, match=r"vendor\.cti not found"):
        GenICamSource(GenICamSpec(cti=tmp_path / "vendor.cti"))._cti_file()
    (tmp_path / "vendor.cti").write_bytes(b"")
    monkeypatch.setenv("GENICAM_GENTL64_PATH", str(tmp_path))
    assert GenICamSource(GenICamSpec())._cti_file() == tmp_path / "vendor.cti"


def test_genicam_buffer_conversion() -> None:
    mono = np.arange(6, dtype=np.uint8)
    assert _genicam_to_bgr(mono, "Mono8", 3, 2).shape == (2, 3, 3)
    mono12 = np.array([0, 4095, 2048, 0], np.uint16)
    assert _genicam_to_bgr(mono12, "Mono12", 2, 2)[0, 1].tolist() == [255, 255, 255]
    rgb = np.array([10, 20, 30] * 4, np.uint8)
    assert _genicam_to_bgr(rgb, "RGB8", 2, 2)[0, 0].tolist() == [30, 20, 10]
    assert _genicam_to_bgr(np.zeros(16, np.uint8), "BayerRG8", 4, 4).shape == (4, 4, 3)
    with pytest.raises(CaptureError, match="Mono10p.*packed"):
        _genicam_to_bgr(np.zeros(4, np.uint8), "Mono10p", 2, 2)
    with pytest.raises(CaptureError, match="YCbCr422_8 is not supported"):
        _genicam_to_bgr(np.zeros(8, np.uint8), "YCbCr422_8", 2, 2)


# ---- factories ----------------------------------------------------------------------------------------


def test_parse_source(tmp_path: Path, image_folder: Path) -> None:
    assert parse_source("0") == CameraSpec(device=0)
    assert parse_source(" 3 ") == CameraSpec(device=3)
    assert parse_source("rtsp://u:p@h/s") == CameraSpec(device="rtsp://u:p@h/s")
    assert parse_source("http://cam/video.mjpg") == CameraSpec(device="http://cam/video.mjpg")
    assert parse_source(str(tmp_path / "line.MP4")) == VideoSpec(path=tmp_path / "line.MP4")
    assert parse_source(str(image_folder)) == FolderSpec(path=image_folder)
    assert parse_source(str(image_folder / "img_000.png")) == FolderSpec(path=image_folder / "img_000.png")


def test_parse_source_rejects_what_it_cannot_place(tmp_path: Path) -> None:
    with pytest.raises(CaptureError, match="is not a camera index .* or an existing image folder"):
        parse_source(str(tmp_path / "no_such_folder"))


def test_open_source_builds_closed_sources(image_folder: Path, tmp_path: Path) -> None:
    cases: list[tuple[object, type]] = [
        (CameraSpec(device=0), CameraSource),
        (VideoSpec(path=tmp_path / "a.avi"), VideoSource),
        (FolderSpec(path=image_folder), FolderSource),
        (GenICamSpec(), GenICamSource),
    ]
    for spec, kind in cases:
        source = open_source(spec)   # type: ignore[arg-type]
        assert isinstance(source, kind) and isinstance(source, FrameSource)
    with pytest.raises(ValueError, match="unknown source spec"):
        open_source("0")   # type: ignore[arg-type]


def test_array_source(rng: np.random.Generator) -> None:
    images = [rng.integers(0, 256, (56, 56, 3), dtype=np.uint8) for _ in range(3)]
    with ArraySource(images, loop=True, count=7) as source:
        ids = []
        while (frame := source.read()) is not None:
            ids.append(frame.frame_id)
    assert ids == list(range(7))
    with pytest.raises(ValueError, match="at least one image"):
        ArraySource([])


def test_fps_must_be_positive(image_folder: Path) -> None:
    with pytest.raises(ValueError, match="fps must be a positive number"):
        FolderSource(FolderSpec(path=image_folder, fps=0))


def test_iter_image_files_walks_in_the_order_of_image_files(tmp_path: Path) -> None:
    names = ["img_10.png", "img_2.png", "a.png", "a/b.png", "a1/x.png", "a12.png", "a1.png", "B/c.jpg",
             "b.png", "d10/2x.png", "d10/ab.png", "d10a.png", "deep/er/still/z.tif", "deep/0.png",
             ".hidden/x.png", "deep/.h.png", "notes.txt", "review/thumbs/img_1.jpg"]
    for name in names:
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(b"x")
    (tmp_path / "link").symlink_to(tmp_path / "deep", target_is_directory=True)

    everything = image_files(tmp_path)
    assert list(iter_image_files(tmp_path)) == everything
    assert "a/b.png" in [p.relative_to(tmp_path).as_posix() for p in everything]
    skipped = list(iter_image_files(tmp_path, skip=tmp_path / "review"))
    assert skipped == [p for p in everything if "review" not in p.parts]


# ---- bounded reads (issue 12): an image path that is a device, a FIFO or a huge file ----


def test_an_image_path_that_is_a_fifo_or_device_is_refused_at_once(tmp_path: Path) -> None:
    import os
    import time

    fifo = tmp_path / "frame.png"
    os.mkfifo(fifo)
    for path, kind in ((fifo, "a FIFO"), (Path("/dev/zero"), "a device")):
        started = time.monotonic()
        with pytest.raises(FrameDecodeError, match=rf"^{path}: .*{kind}, not a regular image file"):
            load_image(path)
        assert time.monotonic() - started < 1.0


def test_an_image_file_over_the_size_limit_is_refused_before_reading(tmp_path: Path) -> None:
    from inspector.capture import MAX_IMAGE_FILE_BYTES

    huge = tmp_path / "huge.png"
    with open(huge, "wb") as handle:
        handle.truncate(MAX_IMAGE_FILE_BYTES + 1)        # sparse: no disk used, nothing to read
    with pytest.raises(FrameDecodeError, match=rf"^{huge}: has {MAX_IMAGE_FILE_BYTES + 1} bytes; an? image file"):
        load_image(huge)


def test_a_float_image_with_huge_negative_values_converts_without_overflow(tmp_path: Path) -> None:
    """Found by the decoder fuzzer: a PFM holding -3e38 overflowed float32 when scaled to 0..255."""
    image = np.array([[0.5, -3.0e38, 1.0, np.nan], [np.inf, -np.inf, 0.2, 0.0]] * 7, np.float32)
    image = np.repeat(image, 4, axis=1)                      # 14 x 16: above the smallest side
    path = tmp_path / "frame.pfm"
    assert cv2.imwrite(str(path), cv2.merge([image, image, image]))
    out = load_image(path)                                   # warnings are errors in the tests
    assert out.dtype == np.uint8 and out.shape == (14, 16, 3)
    assert set(np.unique(out)) <= {0, 51, 128, 255}
