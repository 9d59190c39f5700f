"""The lab's Helm chart repository: ``index.yaml`` and the packaged VSO chart, over HTTP on 127.0.0.1.

``labkit install`` packages the chart of exactly the built manager's version (``helm package`` of the VSO
module's ``chart/``) with an ``index.yaml`` into ``<cache>/helm-<version>/charts``; ``labkit up`` serves that
directory on the lab's recorded ``charts`` port, so that, offline::

    helm repo add vsolab http://127.0.0.1:<port>
    helm install vault-secrets-operator vsolab/vault-secrets-operator --version 1.5.0 ...

It serves only the files a chart repository has (``index.yaml`` and ``*.tgz`` at the top level), read-only.
Before helm is installed the repository is empty (a valid ``index.yaml`` with no entries).

Run it with ``python -m labkit.backends.local.chartrepo --dir DIR --port PORT``.
"""

from __future__ import annotations

import argparse
import http.server
import re
from pathlib import Path
from typing import Any

EMPTY_INDEX = b"apiVersion: v1\nentries: {}\n"
_FILE = re.compile(r"^/([A-Za-z0-9][A-Za-z0-9._-]*\.tgz|index\.yaml)$")


def handler(root: Path) -> type[http.server.BaseHTTPRequestHandler]:
    class Handler(http.server.BaseHTTPRequestHandler):
        def _send(self, code: int, body: bytes, ctype: str, head: bool) -> None:
            self.send_response(code)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if not head:
                self.wfile.write(body)

        def _serve(self, head: bool) -> None:
            path = self.path.split("?", 1)[0]
            if path == "/healthz":
                return self._send(200, b"ok\n", "text/plain", head)
            m = _FILE.match(path)
            if not m:
                return self._send(404, b"not found\n", "text/plain", head)
            f = root / m.group(1)
            if f.is_file():
                ctype = "application/x-yaml" if f.suffix == ".yaml" else "application/gzip"
                return self._send(200, f.read_bytes(), ctype, head)
            if m.group(1) == "index.yaml":
                return self._send(200, EMPTY_INDEX, "application/x-yaml", head)
            return self._send(404, b"not found\n", "text/plain", head)

        def do_GET(self) -> None:
            self._serve(head=False)

        def do_HEAD(self) -> None:
            self._serve(head=True)

        def log_message(self, fmt: str, *args: Any) -> None:
            print(f"{self.address_string()} {fmt % args}", flush=True)

    return Handler


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="labkit.backends.local.chartrepo")
    ap.add_argument("--dir", required=True)
    ap.add_argument("--port", required=True, type=int)
    args = ap.parse_args(argv)
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", args.port), handler(Path(args.dir)))
    srv.serve_forever()


if __name__ == "__main__":
    main()
