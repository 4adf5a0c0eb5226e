#!/usr/bin/env python3
"""Serves a model folder over HTTP the way the HF hub does, for timing tpv's downloads
(docs/numbers.md, "Downloading"): the revision listing with sizes and sha256 (`/api/models/REPO/
revision/REV?blobs=true`) and the files with HTTP Range (`/REPO/resolve/COMMIT/FILE`).

    python3 bench/local_hub.py MODEL_DIR --repo org/name [--port 8765]
    HF_ENDPOINT=http://127.0.0.1:8765 HF_HUB_CACHE=/tmp/hub tpv bench --model org/name --load-only

Standard library only; the sha256 of every file is computed once at start.
"""
import argparse
import hashlib
import json
import os
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

ap = argparse.ArgumentParser()
ap.add_argument("dir")
ap.add_argument("--repo", required=True)
ap.add_argument("--port", type=int, default=8765)
a = ap.parse_args()
root = Path(a.dir)
COMMIT = "0123456789abcdef0123456789abcdef01234567"
files = {}
for p in sorted(root.iterdir()):
    if p.is_file():
        h = hashlib.sha256()
        with open(p, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 24), b""):
                h.update(chunk)
        files[p.name] = (p, p.stat().st_size, h.hexdigest())
listing = json.dumps({"sha": COMMIT, "siblings": [
    {"rfilename": n, "size": s, "lfs": {"sha256": d, "size": s}} for n, (_, s, d) in files.items()]}).encode()


class Hub(BaseHTTPRequestHandler):
    def do_GET(self):
        path = self.path.split("?")[0]
        if path == f"/api/models/{a.repo}/revision/main":
            self.send_response(200)
            self.send_header("Content-Length", str(len(listing)))
            self.end_headers()
            self.wfile.write(listing)
            return
        prefix = f"/{a.repo}/resolve/{COMMIT}/"
        if not path.startswith(prefix) or path[len(prefix):] not in files:
            self.send_error(404)
            return
        p, size, _ = files[path[len(prefix):]]
        start = 0
        rng = self.headers.get("Range", "")
        if rng.startswith("bytes="):
            start = int(rng[6:].split("-")[0] or 0)
        if start >= size > 0:
            self.send_response(416)  # as the hub: the range starts at the end
            self.send_header("Content-Range", f"bytes */{size}")
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        self.send_response(206 if start else 200)
        if start:
            self.send_header("Content-Range", f"bytes {start}-{size - 1}/{size}")
        self.send_header("Content-Length", str(size - start))
        self.end_headers()
        with open(p, "rb") as f:
            offset = start
            while offset < size:
                sent = os.sendfile(self.wfile.fileno(), f.fileno(), offset, size - offset)
                if sent == 0:
                    break
                offset += sent

    def log_message(self, *args):
        pass


print(f"serving {a.repo} ({len(files)} files) on http://127.0.0.1:{a.port}", flush=True)
ThreadingHTTPServer(("127.0.0.1", a.port), Hub).serve_forever()
