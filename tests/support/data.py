"""Shared helpers for the data tests: a Range-capable HTTP server on 127.0.0.1 and fixture makers."""
from __future__ import annotations

import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import click
import cv2
import numpy as np

from repro.commands.data import data


class _Handler(BaseHTTPRequestHandler):
    def log_message(self, *a):  # keep test output quiet
        pass

    def do_GET(self):  # noqa: N802 - http.server API
        srv = self.server
        srv.requests.append((self.path, self.headers.get("Range")))
        p = srv.root / self.path.lstrip("/")
        if not p.is_file():
            self.send_error(404)
            return
        data = p.read_bytes()
        start, rng = 0, self.headers.get("Range")
        if rng:
            start = int(re.match(r"bytes=(\d+)-", rng)[1])
            if start >= len(data):
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(data)}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        else:
            self.send_response(200)
        body = data[start:]
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if srv.cut_next:  # simulate a dropped connection half-way
            srv.cut_next = False
            self.wfile.write(body[: len(body) // 2])
            self.wfile.flush()
            self.close_connection = True
            return
        self.wfile.write(body)


class Server:
    """``with Server(folder) as s: s.url("file.tgz")``; ``s.requests`` logs (path, Range header)."""

    def __init__(self, root: Path):
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        self.httpd.root = Path(root)
        self.httpd.requests = []
        self.httpd.cut_next = False
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self) -> "Server":
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    def url(self, name: str) -> str:
        host, port = self.httpd.server_address[:2]
        return f"http://{host}:{port}/{name}"

    @property
    def requests(self) -> list:
        return self.httpd.requests

    def cut_next(self) -> None:
        self.httpd.cut_next = True


def make_images(folder: Path, n: int, seed: int = 0, size=(40, 60), ext=".png", prefix="img") -> list[Path]:
    """Small random-ish images that compress (gradients + noise), real PNG/JPEG files."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    yy, xx = np.mgrid[0:size[0], 0:size[1]]
    for i in range(n):
        img = ((xx * rng.integers(1, 5) + yy * rng.integers(1, 5) + i * 7) % 256).astype(np.uint8)
        img = np.stack([img, 255 - img, (img // 2 + 60)], -1)
        p = folder / f"{prefix}{i:03d}{ext}"
        assert cv2.imwrite(str(p), img)
        out.append(p)
    return out


def make_video(path: Path, n_frames: int = 9, size=(48, 64)) -> Path:
    """An MJPG .avi whose frame i has brightness 25*i (OpenCV can write it without ffmpeg)."""
    w = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 10, (size[1], size[0]), isColor=True)
    assert w.isOpened()
    for i in range(n_frames):
        w.write(np.full((*size, 3), 25 * i, np.uint8))
    w.release()
    return path


def write_manifest(path: Path, name: str, files: list[dict] | None = None, sources: list[dict] | None = None,
                   kind: str = "download", role: str = "test", extra_prepare: str = "", expected: str = "") -> Path:
    """A manifest file for tests, in TOML written by hand (no writer library needed)."""
    lines = [f'name = "{name}"', f'role = "{role}"', f'kind = "{kind}"', 'description = "test data"',
             'licence = "CC0"', 'citation = "none"']
    if role == "test":
        lines.append('concept = "things"')
    for f in files or []:
        lines.append("[[files]]")
        for k, v in f.items():
            lines.append(f"{k} = " + ("true" if v is True else "false" if v is False else
                                       str(v) if isinstance(v, int) else f'"{v}"'))
    if expected:
        lines.append("[expected]\n" + expected)
    lines.append("[prepare]\nsize = [16, 16]\ngrey = true\nshard_size = 4\nseed = 0\n" + extra_prepare)
    for s in sources or []:
        lines.append("[[prepare.sources]]")
        for k, v in s.items():
            lines.append(f"{k} = " + (str(v) if isinstance(v, int) else f'"{v}"'))
    path.write_text("\n".join(lines) + "\n")
    return path


def data_cli():
    """A bare group holding only ``repro data``, so these tests do not depend on other commands' imports
    (``test_data_manifest.test_registered_in_repro_cli`` checks the real registration)."""
    g = click.Group("repro")
    g.add_command(data)
    return g


cli = data_cli()
