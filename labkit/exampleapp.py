"""The HashiCups example app: a tiny HTTP service that reads its database
credentials from environment variables, as the tutorial's app does.

It is shipped to the cluster in a ConfigMap and run by a stock ``python`` image,
so no custom image is built. Standard library only, plus ``psycopg`` for
``/status`` (installed on first use where the image lacks it).

Endpoints:
  GET /secret   the credentials the process was started with (JSON)
  GET /status   connects to PostgreSQL with them; 200 and the server's answer,
                or 503 and PostgreSQL's error
  GET /cert     the TLS certificate in --tls-cert PATH (or $TLS_CERT_FILE) as read at start: serial number, notAfter, subject
                (never the key); 404 when the app runs without one
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


def _tlv(der, i):
    """One DER element at ``i``: (tag, start of its value, end of its value)."""
    tag, n, i = der[i], der[i + 1], i + 2
    if n & 0x80:
        k = n & 0x7F
        n, i = int.from_bytes(der[i:i + k], "big"), i + k
    return tag, i, i + n


def _asn1_time(raw):
    text = raw.decode()  # UTCTime YYMMDDhhmmssZ, or GeneralizedTime YYYYMMDDhhmmssZ
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.strptime(("20" + text) if len(text) == 13 else text, "%Y%m%d%H%M%SZ"))


def cert_facts(path):
    """Serial number (hex, colon-separated, as Vault prints it), notBefore and notAfter of the first certificate in a
    PEM file, read with the standard library: the app's process loads it once, at start."""
    import ssl

    with open(path) as fh:
        pem = fh.read()
    first = pem[pem.index("-----BEGIN CERTIFICATE-----"):pem.index("-----END CERTIFICATE-----") + 25]
    der = ssl.PEM_cert_to_DER_cert(first)
    _, i, _ = _tlv(der, 0)  # Certificate
    _, i, _ = _tlv(der, i)  # TBSCertificate
    tag, s, e = _tlv(der, i)
    if tag == 0xA0:  # [0] version
        tag, s, e = _tlv(der, e)
    serial = ":".join(f"{b:02x}" for b in der[s:e].lstrip(b"\0"))
    for _ in range(2):  # signature algorithm, issuer
        _, _, e = _tlv(der, e)
    _, s, _ = _tlv(der, e)  # validity
    _, s1, e1 = _tlv(der, s)
    _, s2, e2 = _tlv(der, e1)
    return {"serial_number": serial, "not_before": _asn1_time(der[s1:e1]), "not_after": _asn1_time(der[s2:e2])}


def _cert_at_start():
    args = sys.argv[1:]  # --tls-cert PATH, or $TLS_CERT_FILE
    path = args[args.index("--tls-cert") + 1] if "--tls-cert" in args[:-1] else os.environ.get("TLS_CERT_FILE", "")
    try:
        return {**cert_facts(path), "file": path} if path else None
    except (OSError, ValueError) as exc:
        return {"error": f"{path}: {exc}"}


CERT = _cert_at_start()


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
        elif self.path == "/cert":
            self._send(200 if CERT else 404, {**(CERT or {"error": "no TLS_CERT_FILE"}), "pid": os.getpid(), "started": STARTED})
        elif self.path == "/healthz":
            self._send(200, {"ok": True})
        else:
            self._send(404, {"error": "try /secret, /status, /cert or /healthz"})

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
