"""The HashiCups example app: a tiny HTTP service that reads its database
credentials from environment variables, as the tutorial's app does.

It is shipped to the cluster in a ConfigMap and run by a stock ``python`` image,
so no custom image is built. Standard library only, plus ``psycopg`` for
``/status`` (installed on first use where the image lacks it).

Endpoints:
  GET /secret   the credentials the process was started with (JSON)
  GET /status   connects to PostgreSQL with them; 200 and the server's answer,
                or 503 and PostgreSQL's error
  GET /healthz  liveness/readiness: 200 while the process serves
"""

import json
import os
import subprocess
import sys
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

STARTED = time.time()


def _psycopg():
    try:
        import psycopg
    except ImportError:  # a stock python image: fetch the driver once
        subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--user", "psycopg[binary]"], check=True)
        import site

        sys.path.append(site.getusersitepackages())
        import psycopg
    return psycopg


def creds():
    return {
        "username": os.environ.get("DB_USERNAME", ""),
        "password": os.environ.get("DB_PASSWORD", ""),
    }


def status():
    c = creds()
    host, port = os.environ.get("DB_HOST", "127.0.0.1"), os.environ.get("DB_PORT", "5432")
    try:
        psycopg = _psycopg()
        with psycopg.connect(host=host, port=port, user=c["username"], password=c["password"],
                             dbname=os.environ.get("DB_NAME", "postgres"), connect_timeout=3) as conn:
            user, version = conn.execute("select current_user, version()").fetchone()
        return 200, {"status": "ok", "database": f"{host}:{port}", "connected_as": user, "server": version.split(",")[0]}
    except Exception as exc:  # report the database's own error
        return 503, {"status": "error", "database": f"{host}:{port}", "error": str(exc).strip().splitlines()[0]}


class Handler(BaseHTTPRequestHandler):
    def _send(self, code, body):
        data = json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self):
        if self.path == "/secret":
            self._send(200, {**creds(), "pid": os.getpid(), "started": STARTED})
        elif self.path == "/status":
            self._send(*status())
        elif self.path == "/healthz":
            self._send(200, {"ok": True})
        else:
            self._send(404, {"error": "try /secret, /status or /healthz"})

    def log_message(self, fmt, *args):
        sys.stdout.write("{} {}\n".format(time.strftime("%H:%M:%S"), fmt % args))
        sys.stdout.flush()


def main():
    port = int(os.environ.get("PORT", "8080"))
    srv = ThreadingHTTPServer((os.environ.get("BIND_ADDR", "0.0.0.0"), port), Handler)
    print(f"hashicups-exampleapp listening on {port}", flush=True)
    srv.serve_forever()


if __name__ == "__main__":
    main()
