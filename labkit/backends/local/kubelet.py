"""The kubelet parts of the node agent that the API server and ``kubectl`` talk to.

* container logs in the CRI format (``<RFC3339Nano> <stream> F <line>``), one file per container and a
  ``.previous`` file for the instance before the last restart, read like the kubelet reads them
  (``follow``, ``tailLines``, ``previous``, ``timestamps``, ``sinceSeconds``, ``sinceTime``, ``limitBytes``);
* the kubelet API subset the API server proxies, over TLS on 127.0.0.1: ``/containerLogs/...``, and
  ``/exec``, ``/attach``, ``/portForward``, ``/run`` answered at once with a Status saying what to use
  instead. Only a client certificate from the lab's CA named ``kube-apiserver-kubelet-client`` is accepted
  (the handshake itself needs a certificate of the lab's CA; any other name gets 403);
* core/v1 Events as a kubelet records them (aggregated: a repeated event counts up);
* probes: ``httpGet``, ``tcpSocket`` and ``exec``, run against the pod's local ports.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import http.server
import json
import queue
import select
import socket
import ssl
import subprocess
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, Protocol

import requests
from kubernetes.client.exceptions import ApiException

if TYPE_CHECKING:
    from typing import Self  # 3.11+; only the type checker reads it

NODE_NAME = "vsolab-node"
PORT_ANNOTATION = "vsolab.dev/port"
CLIENT_CN = "kube-apiserver-kubelet-client"
STREAMING = ("exec", "attach", "portForward", "run")


def now_iso() -> str:
    return dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


# -- log files -------------------------------------------------------------------------------------
def log_path(logs: Path, namespace: str, pod: str, container: str, previous: bool = False) -> Path:
    """``logs/pods/<ns>_<pod>_<container>.log`` (names are DNS labels: no ``_`` inside them)."""
    return logs / "pods" / f"{namespace}_{pod}_{container}{'.previous' if previous else ''}.log"


def remove_logs(logs: Path, namespace: str, pod: str) -> None:
    for f in (logs / "pods").glob(f"{namespace}_{pod}_*.log"):
        f.unlink(missing_ok=True)


class LogPump:
    """Copy a process's stdout and stderr, line by line, into a CRI-format log file."""

    def __init__(self, proc: subprocess.Popen, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.fh = open(path, "ab")  # noqa: SIM115 - closed by the last pump thread
        self.lock = threading.Lock()
        self.done = threading.Event()
        self._open = 2
        for stream, pipe in (("stdout", proc.stdout), ("stderr", proc.stderr)):
            threading.Thread(target=self._pump, args=(stream, pipe), daemon=True).start()

    def _pump(self, stream: str, pipe: IO[bytes] | None) -> None:
        try:
            for line in iter(lambda: pipe.readline(16384), b"") if pipe else ():  # a longer line: P records
                ts = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
                tag = b"F" if line.endswith(b"\n") else b"P"
                with self.lock:
                    self.fh.write(b"%s %s %s %s" % (ts.encode(), stream.encode(), tag, line.rstrip(b"\n") + b"\n"))
                    self.fh.flush()
        except (OSError, ValueError):
            pass
        finally:
            if pipe:
                pipe.close()
            with self.lock:
                self._open -= 1
                if self._open == 0:
                    self.fh.close()
                    self.done.set()


@dataclass
class LogOptions:
    follow: bool = False
    previous: bool = False
    timestamps: bool = False
    tail: int | None = None
    since: float | None = None  # epoch seconds
    limit: int | None = None

    @classmethod
    def from_query(cls, query: dict[str, list[str]]) -> LogOptions:
        def one(name: str) -> str:
            return query.get(name, [""])[0]

        def number(name: str) -> int | None:
            v = one(name)
            if v == "" or v == "all":
                return None
            n = int(v)
            if n < 0 if name == "tailLines" else n <= 0:
                raise ValueError(name)
            return n

        since = None
        if number("sinceSeconds") is not None:
            since = time.time() - (number("sinceSeconds") or 0)
        elif one("sinceTime"):
            since = dt.datetime.fromisoformat(one("sinceTime").replace("Z", "+00:00")).timestamp()
        return cls(follow=one("follow") == "true", previous=one("previous") == "true",
                   timestamps=one("timestamps") == "true", tail=number("tailLines") if one("tailLines") else number("tail"),
                   since=since, limit=number("limitBytes"))


def _parse(line: bytes) -> tuple[bytes, float, bytes]:
    """A CRI line → (timestamp text, epoch seconds, content with its newline)."""
    ts, _, rest = line.partition(b" ")
    _stream, _, rest = rest.partition(b" ")
    tag, _, content = rest.partition(b" ")
    try:
        epoch = dt.datetime.strptime(ts.decode(), "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=dt.timezone.utc).timestamp()
    except ValueError:
        epoch = 0.0
    if tag == b"P":
        content = content.rstrip(b"\n")
    return ts, epoch, content


def read_log(path: Path, opts: LogOptions, done: Callable[[], bool], cancelled: Callable[[], bool]) -> Iterator[bytes]:
    """The container's log as the kubelet serves it; with ``follow``, until the container has exited (``done``)
    or the reader has gone (``cancelled``)."""
    budget = opts.limit

    def emit(line: bytes) -> bytes | None:
        nonlocal budget
        ts, epoch, content = _parse(line)
        if opts.since is not None and epoch < opts.since:
            return None
        out = (ts[:-1] + b"000Z " if opts.timestamps else b"") + content  # RFC3339Nano, as the kubelet
        if budget is not None:
            out, budget = out[:budget], budget - len(out)
        return out

    try:
        fh = open(path, "rb")  # noqa: SIM115 - closed below
    except FileNotFoundError:
        return
    with fh:
        lines = fh.readlines()
        pending = b""
        if lines and not lines[-1].endswith(b"\n"):
            pending = lines.pop()
        if opts.tail is not None:
            lines = lines[len(lines) - opts.tail:] if opts.tail else []
        for line in lines:
            out = emit(line)
            if out:
                yield out
            if budget is not None and budget <= 0:
                return
        if not opts.follow:
            return
        while not cancelled():
            finished = done()  # read once more after the writer finished: nothing is lost
            chunk = fh.readline()
            if not chunk:
                if finished:
                    return
                time.sleep(0.1)
                continue
            pending += chunk
            if not pending.endswith(b"\n"):
                continue
            out, pending = emit(pending), b""
            if out:
                yield out
            if budget is not None and budget <= 0:
                return


# -- events ----------------------------------------------------------------------------------------
class EventRecorder:
    """Record core/v1 Events for pods in a background thread, counting repeats like the kubelet's recorder."""

    def __init__(self, core: Any) -> None:
        self.core = core
        self.queue: queue.Queue[tuple[Any, ...]] = queue.Queue()
        self.seen: dict[tuple[str, ...], tuple[str, int]] = {}
        threading.Thread(target=self._loop, daemon=True).start()

    def emit(self, pod: Any, reason: str, message: str, *, container: str = "", warning: bool = False,
             component: str = "kubelet") -> None:
        self.queue.put((pod.metadata.namespace, pod.metadata.name, pod.metadata.uid, container, reason, message,
                        "Warning" if warning else "Normal", component))

    def forget(self, uid: str) -> None:
        self.queue.put(("", "", uid, None, "", "", "", ""))

    def _loop(self) -> None:
        while True:
            item = self.queue.get()
            try:
                self._record(*item)
            except ApiException as exc:  # an event is best effort, as in the kubelet
                print(f"{now_iso()} agent: event {item[4]} not recorded: HTTP {exc.status} {exc.reason}", flush=True)
            except Exception as exc:  # the API server restarting, ...
                print(f"{now_iso()} agent: event {item[4]} not recorded: {type(exc).__name__}", flush=True)

    def _record(self, ns: str, pod: str, uid: str, container: str | None, reason: str, message: str, kind: str,
                component: str) -> None:
        if container is None:
            self.seen = {k: v for k, v in self.seen.items() if k[0] != uid}
            return
        now = now_iso()
        key = (uid, container, reason, message)
        if key in self.seen:
            name, count = self.seen[key]
            try:
                self.core.patch_namespaced_event(name, ns, {"count": count + 1, "lastTimestamp": now})
                self.seen[key] = (name, count + 1)
                return
            except ApiException as exc:
                if exc.status != 404:
                    raise
        name = f"{pod}.{time.time_ns():x}"
        involved = {"apiVersion": "v1", "kind": "Pod", "namespace": ns, "name": pod, "uid": uid}
        if container:
            involved["fieldPath"] = f"spec.containers{{{container}}}"
        body = {
            "apiVersion": "v1", "kind": "Event", "metadata": {"name": name, "namespace": ns},
            "involvedObject": involved, "reason": reason, "message": message, "type": kind,
            "source": {"component": component, **({"host": NODE_NAME} if component == "kubelet" else {})},
            "reportingComponent": component, "reportingInstance": NODE_NAME if component == "kubelet" else "",
            "firstTimestamp": now, "lastTimestamp": now, "count": 1,
        }
        try:
            self.core.create_namespaced_event(ns, body)
        except ApiException as exc:
            if exc.status in (403, 404):  # the namespace is gone, or being deleted
                return
            raise
        self.seen[key] = (name, 1)


# -- probes ----------------------------------------------------------------------------------------
def run_probe(probe: Any, port_of: Callable[[Any], int | None], env: dict[str, str], cwd: str,
              argv_of: Callable[[list[str]], list[str]], as_user: dict[str, Any] | None = None) -> tuple[bool, str]:
    """Run one probe now against the pod's local ports: (succeeded, the kubelet's words for a failure)."""
    timeout = probe.timeout_seconds or 1
    action = probe.http_get or probe.tcp_socket
    port = port_of(action.port) if action is not None else None
    if action is not None and port is None:
        return False, f"the probe's port {action.port!r} is not a port of the pod"
    addr = f"127.0.0.1:{port}"
    if probe.http_get is not None:
        g = probe.http_get
        url = f"{(g.scheme or 'HTTP').lower()}://{addr}{g.path or '/'}"
        try:
            r = requests.get(url, timeout=timeout, headers={h.name: h.value for h in g.http_headers or []},
                             verify=False, allow_redirects=False)
        except requests.Timeout:
            return False, f'Get "{url}": context deadline exceeded (Client.Timeout exceeded while awaiting headers)'
        except requests.ConnectionError:
            return False, f'Get "{url}": dial tcp {addr}: connect: connection refused'
        except requests.RequestException as exc:
            return False, f'Get "{url}": {type(exc).__name__}'
        if 200 <= r.status_code < 400:
            return True, ""
        return False, f"HTTP probe failed with statuscode: {r.status_code}"
    if probe.tcp_socket is not None:
        try:
            with socket.create_connection(("127.0.0.1", port or 0), timeout=timeout):
                return True, ""
        except TimeoutError:
            return False, f"dial tcp {addr}: i/o timeout"
        except OSError as exc:
            return False, f"dial tcp {addr}: connect: {(exc.strerror or str(exc)).lower()}"
    if probe._exec is not None:
        try:
            done = subprocess.run(argv_of(list(probe._exec.command or [])), env=env, cwd=cwd, capture_output=True,
                                  timeout=timeout, stdin=subprocess.DEVNULL, **(as_user or {}))  # as the pod's user
        except subprocess.TimeoutExpired:
            return False, f"command timed out after {timeout}s"
        except OSError as exc:
            return False, f"exec: {exc.strerror or exc}"
        out = (done.stdout + done.stderr).decode(errors="replace").strip()
        return done.returncode == 0, out or f"command exited with code {done.returncode}"
    return True, ""


# -- the kubelet API over TLS ----------------------------------------------------------------------
def _status(code: int, reason: str, message: str) -> bytes:
    return json.dumps({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                       "message": message, "reason": reason, "code": code}).encode()


def streaming_refusal(verb: str, namespace: str, pod: str, ports: dict[str, int]) -> str:
    """One paragraph: why ``kubectl exec``/``attach``/``port-forward``/``run`` cannot work here, and what to use."""
    what = {"portForward": "port-forward to", "exec": "exec into", "attach": "attach to", "run": "run in"}[verb]
    where = ", ".join(f"127.0.0.1:{local} (its port {cp})" for cp, local in ports.items())
    where = f"pod {namespace}/{pod} listens on {where}" if where else f"pod {namespace}/{pod} declares no port"
    return (f"The vsolab node runs each container as a local process on this machine (pod IP 127.0.0.1), so there is "
            f"no container to {what}: {where}; its first port is in the pod annotation {PORT_ANNOTATION} (`kubectl "
            f"get pod {pod} -n {namespace} -o jsonpath='{{.metadata.annotations.vsolab\\.dev/port}}'`). Connect "
            f"to that address directly (curl, psql, a browser), read the container's output with `kubectl logs "
            f"{pod} -n {namespace}`, and run commands in a terminal on the lab's machine instead.")


class KubeletAPI(Protocol):
    """What the handler needs from the agent."""

    def log_source(self, namespace: str, pod: str, container: str, previous: bool
                   ) -> tuple[Path, Callable[[], bool]] | str | None:
        """The log file and "has its writer finished?"; or why there is none yet; None: no such container."""

    def pod_ports(self, namespace: str, pod: str) -> dict[str, int]:
        """The pod's containerPort → local port map (its ``vsolab.dev/ports`` annotation)."""


class _TLSServer(http.server.ThreadingHTTPServer):
    daemon_threads = True
    context: ssl.SSLContext

    def finish_request(self: Self, request: Any, client_address: Any) -> None:
        request.settimeout(10)
        try:
            tls = self.context.wrap_socket(request, server_side=True)
        except (OSError, ssl.SSLError):
            return  # no (valid) client certificate: nothing is said
        tls.settimeout(None)
        try:
            self.RequestHandlerClass(tls, client_address, self)
        finally:
            tls.close()


def serve(port: int, pki: Path, api: KubeletAPI, stopping: threading.Event) -> http.server.HTTPServer:
    """Serve the kubelet API subset on 127.0.0.1:``port`` in a thread; return the server."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(str(pki / "kubelet.crt"), str(pki / "kubelet.key"))
    ctx.load_verify_locations(str(pki / "ca.crt"))
    ctx.verify_mode = ssl.CERT_REQUIRED

    class Handler(http.server.BaseHTTPRequestHandler):
        def reply(self, code: int, body: bytes, ctype: str = "application/json") -> None:
            self.send_response(code)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def authorized(self) -> bool:
            cert = self.connection.getpeercert() or {}
            names = [v for rdn in cert.get("subject", ()) for k, v in rdn if k == "commonName"]
            if names == [CLIENT_CN]:
                return True
            self.reply(403, b"Forbidden: only the lab's API server may use the node agent's API\n", "text/plain")
            return False

        def route(self) -> None:
            if not self.authorized():
                return
            url = urllib.parse.urlsplit(self.path)
            parts = [urllib.parse.unquote(p) for p in url.path.strip("/").split("/")]
            if parts[0] in STREAMING and len(parts) >= 3:
                msg = streaming_refusal(parts[0], parts[1], parts[2], api.pod_ports(parts[1], parts[2]))
                self.reply(501, _status(501, "NotImplemented", msg))
            elif parts[0] == "containerLogs" and len(parts) == 4 and self.command == "GET":
                self.logs(parts[1], parts[2], parts[3], urllib.parse.parse_qs(url.query))
            else:
                self.reply(404, b"404 page not found\n", "text/plain")

        def logs(self, ns: str, pod: str, container: str, query: dict[str, list[str]]) -> None:
            try:
                opts = LogOptions.from_query(query)
            except ValueError:
                self.reply(422, b'{"message": "Invalid request."}', "text/plain")
                return
            source = api.log_source(ns, pod, container, opts.previous)
            if source is None:
                self.reply(404, f'container "{container}" in pod "{pod}" not found\n'.encode(), "text/plain")
                return
            if isinstance(source, str):
                self.reply(400, source.encode(), "text/plain")
                return
            path, done = source
            if opts.previous and not path.exists():
                self.reply(400, f'previous terminated container "{container}" in pod "{pod}" not found'.encode(),
                           "text/plain")
                return
            self.send_response(200)
            self.send_header("Content-Type", "text/plain")
            self.end_headers()  # HTTP/1.0: the body ends when the connection closes
            try:
                for chunk in read_log(path, opts, done, lambda: stopping.is_set() or self.gone()):
                    self.wfile.write(chunk)
            except OSError:
                pass  # the client went away (kubectl logs -f interrupted)

        def gone(self) -> bool:
            """The client closed its side (it sends nothing after its request): stop following for it."""
            sock = self.connection
            if not select.select([sock], [], [], 0)[0]:
                return False
            try:
                sock.setblocking(False)
                return sock.recv(1) == b""
            except ssl.SSLWantReadError:
                return False
            except OSError:
                return True
            finally:
                with contextlib.suppress(OSError):
                    sock.setblocking(True)

        do_GET = do_POST = do_PUT = do_DELETE = do_HEAD = route

        def log_message(self, *args: Any) -> None:
            pass

    srv = _TLSServer(("127.0.0.1", port), Handler)
    srv.context = ctx
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    return srv


def exit_code(returncode: int) -> int:
    """Popen's ``-N`` for "killed by signal N" → the container runtime's ``128 + N``."""
    return 128 - returncode if returncode < 0 else returncode
