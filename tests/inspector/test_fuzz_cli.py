"""The ``inspector`` command line, fuzzed: any argument list ends in a documented exit code, never a traceback.

Arguments are drawn from what people type: every subcommand and option, real and broken files (a taught
recipe, a recipe with a YAML error, an empty file, a folder of images, a corrupt image, missing paths,
odd names), numbers out of range, stray text, and store URLs that carry a password. Whatever the mix,
`main` must return 0 or 1 (or argparse must exit 0 or 2), print one clear line on error, never a
traceback, and never print the password.

``demo`` is left out (it teaches the real demo recipe: minutes); its parser is covered by the help test.
Live sources (camera indices, stream URLs) are fuzzed through `parse_source` below rather than through
``run``, which waits for a camera that never comes.
"""

from __future__ import annotations

import re
import shutil
import signal
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from types import FrameType

import cv2
import numpy as np
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from inspector.capture import CameraSpec, FolderSpec, VideoSpec, parse_source
from inspector.cli import EXIT_ERROR, EXIT_OK, EXIT_USAGE, main
from inspector.errors import CaptureError
from tests.helpers.images import textured_part, write_images

SECRET = "s3cr3t-pw"
EXAMPLE_SECONDS = 60       # one argument list that runs longer than this is a hang, not slowness


class _Hang(BaseException):
    """Raised by the alarm: not an Exception, so no handler in the code under test can swallow it."""


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory, _taught_template: Path) -> Path:
    """A working folder with the files the fuzzer points at (the commands run with it as cwd)."""
    root = tmp_path_factory.mktemp("cli-fuzz")
    shutil.copytree(_taught_template.parent, root / "recipe")
    rng = np.random.default_rng(3)
    write_images(root / "frames", [textured_part(rng) for _ in range(3)])
    (root / "empty_dir").mkdir()
    (root / "empty.yaml").write_bytes(b"")
    (root / "broken.yaml").write_text("name: [unclosed\nsource: {type: folder\n", encoding="utf-8")
    (root / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 20)
    cv2.imwrite(str(root / "part.png"), textured_part(rng))
    (root / "not_a_dir").write_text("x", encoding="utf-8")
    # a tiny MVTec-AD-layout category: evaluate has something real to chew on
    cat = root / "category"
    write_images(cat / "train" / "good", [textured_part(rng) for _ in range(2)])
    write_images(cat / "test" / "good", [textured_part(rng)])
    # a store holding a few inspections, for stats and feedback
    db = root / "station.db"
    code = main(["run", str(root / "recipe" / _taught_template.name), "--source", str(root / "frames"),
                 "--store", str(db), "--quiet", "--no-archive"])
    assert code == EXIT_OK
    assert sqlite3.connect(db).execute("SELECT COUNT(*) FROM inspections").fetchone() == (3,)
    return root


@pytest.fixture
def in_world(world: Path, monkeypatch: pytest.MonkeyPatch, tiny_weights_file: Path) -> Iterator[Path]:
    monkeypatch.chdir(world)
    monkeypatch.setenv("INSPECTOR_WEIGHTS", str(tiny_weights_file))   # "default weights" = the tiny file

    def on_alarm(signum: int, frame: FrameType | None) -> None:
        raise _Hang

    previous = signal.signal(signal.SIGALRM, on_alarm)
    yield world
    signal.alarm(0)
    signal.signal(signal.SIGALRM, previous)


PATHS = st.sampled_from([
    "recipe/tiny_part.yaml", "broken.yaml", "empty.yaml", "frames", "empty_dir", "part.png", "corrupt.png",
    "category", "station.db", "missing.yaml", "missing/dir/file", "not_a_dir/below", "x" * 300, "",
    "-", ".", "ünï cödé.yaml", "out/new", "recipe",
])
NUMBERS = st.integers(min_value=-(2**70), max_value=2**70).map(str) | st.sampled_from(["0", "1", "3", "-1", "1e3"])
TEXT = st.text(max_size=12)
STORES = st.sampled_from([
    "station.db", "missing/dir/x.db", "empty_dir", "part.png", "sqlite:///station.db",
    f"postgresql://inspector:{SECRET}@127.0.0.1:1/stats", f"mysql://root:{SECRET}@localhost/db", "bogus://x",
])
VALUE = st.one_of(PATHS, NUMBERS, TEXT, STORES, st.sampled_from(["good", "scratch", "auto", "cpu", "cuda", "hour",
                                                                 "2026-11-23T06:00", "yesterday"]))

OPTIONS: dict[str, dict[str, st.SearchStrategy[str] | None]] = {
    # option -> strategy of its value (None: a flag)
    "run": {"--source": PATHS, "--lot": TEXT, "--max-frames": NUMBERS, "--no-archive": None, "--quiet": None,
            "--store": STORES, "--device": VALUE, "--weights": PATHS},
    "train": {"--good": PATHS, "--defects": PATHS, "--fixed-config": None, "--device": VALUE, "--weights": PATHS},
    "evaluate": {"--shots": NUMBERS, "--zero-shot": None, "--json": PATHS, "--seed": NUMBERS,
                 "--device": VALUE, "--weights": PATHS},
    "review": {"--recipe": PATHS, "--zero-shot": None, "--out": PATHS, "--device": VALUE, "--weights": PATHS},
    "stats": {"--by": VALUE, "--recipe": TEXT, "--line": TEXT, "--lot": TEXT, "--since": VALUE, "--until": VALUE,
              "--csv": PATHS, "--store": STORES},
    "feedback": {"--user": TEXT, "--note": TEXT, "--recipe": PATHS, "--region": NUMBERS, "--store": STORES,
                 "--device": VALUE},
    "info": {"--weights": PATHS},
    "export": {"--out": PATHS, "--weights": PATHS},
}
POSITIONALS: dict[str, list[st.SearchStrategy[str]]] = {
    "run": [PATHS], "train": [PATHS], "evaluate": [PATHS], "review": [PATHS], "stats": [],
    "feedback": [NUMBERS, VALUE], "info": [], "export": [PATHS],
}


@st.composite
def argument_lists(draw: st.DrawFn) -> list[str]:
    args: list[str] = []
    if draw(st.integers(0, 9)) == 0:
        args.append(draw(st.sampled_from(["-v", "--version", "--help", "--bogus", "-x"])))
    command = draw(st.sampled_from([*OPTIONS, "bogus", ""]))
    args.append(command)
    options = OPTIONS.get(command, {})
    # positionals mostly in place, sometimes missing or one too many
    for strategy in POSITIONALS.get(command, []):
        if draw(st.integers(0, 9)):
            args.append(draw(strategy))
    if draw(st.integers(0, 9)) == 0:
        args.append(draw(VALUE))
    for _ in range(draw(st.integers(0, 4))):
        name = draw(st.sampled_from([*options, "--bogus", "-h"])) if options else "--bogus"
        value = options.get(name)
        args.append(name)
        if value is not None:
            if draw(st.integers(0, 19)):          # now and then the value is missing
                args.append(draw(value))
    # make sure the commands whose work is slow get a fast option often
    if command == "run" and draw(st.booleans()):
        args += ["--max-frames", "2", "--no-archive"]
    return args


@settings(max_examples=1000, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(argv=argument_lists())
def test_any_argument_list_exits_cleanly(in_world: Path, capsys: pytest.CaptureFixture[str], argv: list[str]) -> None:
    capsys.readouterr()
    signal.alarm(EXAMPLE_SECONDS)
    try:
        code = main(argv)
    except SystemExit as exit_info:           # argparse: --help / --version (0) or a usage error (2)
        code = exit_info.code
        assert code in (EXIT_OK, EXIT_USAGE), f"{argv}: argparse exit {code}"
    except _Hang:
        pytest.fail(f"{argv}: still running after {EXAMPLE_SECONDS} s")
    finally:
        signal.alarm(0)
    out, err = capsys.readouterr()
    event(f"exit {code}")                     # pytest --hypothesis-show-statistics shows the mix
    assert code in (EXIT_OK, EXIT_ERROR, EXIT_USAGE), f"{argv}: exit {code}\n{err}"
    assert "Traceback" not in err and "Traceback" not in out, f"{argv}:\n{err}"
    assert SECRET not in out and SECRET not in err, f"{argv}: the store password was printed"
    if code == EXIT_ERROR:
        message = [line for line in err.splitlines() if line and not line.startswith(("warning:", "WARNING"))]
        assert message, f"{argv}: exit 1 without saying why"
        assert len(message[-1]) < 2000, message[-1]


# ---- parse_source: what is typed as --source or into the app's source box ------------------------

SOURCE_TEXT = st.one_of(
    st.text(max_size=40),
    st.from_regex(r"\A(rtsp|http|https|file|gige):/{0,2}([a-z]+:pw[0-9]{4,8}@)?[a-z0-9.:/_@-]{0,30}\Z"),
    st.integers(min_value=-5, max_value=2**40).map(str),
    st.sampled_from(["0", " 1 ", "frames", "part.png", "missing.mp4", "video.AVI", "file://frames", "~", ""]),
)


@settings(max_examples=1000, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=SOURCE_TEXT)
def test_parse_source_returns_a_spec_or_a_clear_capture_error(in_world: Path, text: str) -> None:
    try:
        spec = parse_source(text)
    except CaptureError as exc:
        message = str(exc)
        assert "not a camera index" in message
        for password in re.findall(r"[a-z]+:/{1,2}[a-z]+:(pw[0-9]{4,8})@", text):
            assert password not in message, f"the password in {text!r} was printed: {message}"
        return
    assert isinstance(spec, CameraSpec | VideoSpec | FolderSpec)
    if isinstance(spec, CameraSpec) and isinstance(spec.device, int):
        assert spec.device >= 0
