"""A TCP forwarder on loopback that can fail on demand, in front of a real service (issue 9 point 1).

Nothing here imitates the service: ``FaultProxy`` relays bytes between the IdP and the real PostgreSQL, Redis,
SMTP server or SMS gateway, and breaks the path between them the way a network or a crashed server does::

    with FaultProxy("127.0.0.1", 6379) as proxy:     # point the IdP at redis://127.0.0.1:<proxy.port>/0
        proxy.cut()          # every open connection is reset, new ones are refused (the port is closed)
        proxy.restore()      # the same port accepts and forwards again
        proxy.stall()        # new connections are accepted and then left silent: a hung server
        proxy.cut_on(b"INSERT INTO account_lines")   # cut the moment a client sends these bytes

``cut_on`` makes a fault land in the middle of a request at a chosen statement or command, deterministically:
the bytes that contain the pattern are never forwarded, every connection is reset and the port closes, exactly
as if the server died right then. ``forwarded`` counts the bytes that went through each way.

The listening port is chosen by the kernel once and kept across ``cut``/``restore`` (``SO_REUSEADDR``), so the
IdP's configuration stays valid for the proxy's whole life.

The second half serves the live tests and ``scripts/soak``: ``private_database`` (a PostgreSQL database made
and dropped around a block), ``flask_cli`` (``flask --app wsgi db upgrade`` with the IdP's settings),
``GunicornIdP`` (real gunicorn workers with those settings; ``worker_pids``, ``rss_kib``) and ``Browser`` (a
person's browser over HTTP: forms with their CSRF token, the login, the token endpoint).
"""
from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import select
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
from urllib.parse import parse_qs, urlsplit, urlunsplit


def _reset(sock: socket.socket) -> None:
    """Close at once with RST (SO_LINGER 0), as a crashed peer looks to the other side.

    ``shutdown`` first: ``close`` alone is deferred while a pump thread sits in ``select`` on the socket (up to
    its 0.5 s timeout), which no crashed server does: its kernel ends the connection the moment it dies."""
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    try:
        sock.close()
    except OSError:
        pass


class FaultProxy:
    def __init__(self, target_host: str, target_port: int, host: str = "127.0.0.1"):
        self.target = (target_host, int(target_port))
        self.host = host
        self.port = 0
        self.mode = "forward"  # forward | cut | stall
        self.forwarded = {"up": 0, "down": 0}  # bytes client → service, service → client
        self.accepted = 0
        self.triggered = threading.Event()  # set when a cut_on pattern fired
        self._pattern: bytes | None = None
        self._lock = threading.RLock()
        self._listener: socket.socket | None = None
        self._sockets: set[socket.socket] = set()
        self._stop = threading.Event()
        self._acceptor: threading.Thread | None = None

    # lifecycle ----------------------------------------------------------------------------------------------
    def start(self) -> FaultProxy:
        self._listen()
        return self

    def stop(self) -> None:
        self._stop.set()
        with self._lock:
            self._close_listener()
            self._drop_all()
        if self._acceptor is not None:
            self._acceptor.join(5)

    def __enter__(self) -> FaultProxy:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    @property
    def address(self) -> tuple[str, int]:
        return self.host, self.port

    # faults -------------------------------------------------------------------------------------------------
    def cut(self) -> None:
        """Reset every open connection and refuse new ones (the port is closed) until ``restore``."""
        with self._lock:
            self.mode = "cut"
            self._pattern = None
            self._close_listener()
            self._drop_all()

    def stall(self) -> None:
        """Drop open connections; accept new ones but never forward a byte: a server that hangs."""
        with self._lock:
            self.mode = "stall"
            self._pattern = None
            self._drop_all()
            if self._listener is None:
                self._listen()

    def restore(self) -> None:
        """Forward again on the same port; connections held by ``stall`` are reset."""
        with self._lock:
            self.mode = "forward"
            self._pattern = None
            self._drop_all()
            if self._listener is None:
                self._listen()

    def cut_on(self, pattern: bytes) -> None:
        """Forward until a client sends ``pattern``; then, before those bytes reach the service, ``cut``."""
        with self._lock:
            self.triggered.clear()
            self._pattern = pattern

    def connections(self) -> int:
        with self._lock:
            return len(self._sockets)

    # internals ----------------------------------------------------------------------------------------------
    def _listen(self) -> None:
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind((self.host, self.port))
        listener.listen(128)
        self.port = listener.getsockname()[1]
        self._listener = listener
        self._acceptor = threading.Thread(target=self._accept_loop, args=(listener,), daemon=True,
                                          name=f"faultproxy-{self.port}")
        self._acceptor.start()

    def _close_listener(self) -> None:
        if self._listener is not None:
            listener, self._listener = self._listener, None
            try:
                listener.shutdown(socket.SHUT_RDWR)  # wakes the blocked accept()
            except OSError:
                pass
            listener.close()

    def _drop_all(self) -> None:
        for sock in list(self._sockets):
            _reset(sock)
        self._sockets.clear()

    def _accept_loop(self, listener: socket.socket) -> None:
        while not self._stop.is_set():
            try:
                client, _address = listener.accept()
            except OSError:
                return  # the listener was closed: cut() or stop()
            with self._lock:
                if self._listener is not listener or self.mode == "cut":
                    _reset(client)
                    continue
                self.accepted += 1
                self._sockets.add(client)
                if self.mode == "stall":
                    continue  # held open, never answered, until restore()/cut()
            threading.Thread(target=self._connect, args=(client,), daemon=True).start()

    def _connect(self, client: socket.socket) -> None:
        try:
            upstream = socket.create_connection(self.target, timeout=5)
            upstream.settimeout(None)
        except OSError:
            with self._lock:
                self._sockets.discard(client)
            _reset(client)
            return
        with self._lock:
            if client not in self._sockets or self.mode != "forward":  # cut while connecting
                _reset(upstream)
                return
            self._sockets.add(upstream)
        threading.Thread(target=self._pump, args=(client, upstream, "up"), daemon=True).start()
        threading.Thread(target=self._pump, args=(upstream, client, "down"), daemon=True).start()

    def _pump(self, source: socket.socket, sink: socket.socket, direction: str) -> None:
        tail = b""
        while True:
            try:
                readable, _w, _x = select.select([source], [], [], 0.5)
                if not readable:
                    if source.fileno() < 0:
                        return
                    continue
                data = source.recv(65536)
            except (OSError, ValueError):
                data = b""
            if not data:
                with self._lock:
                    for sock in (source, sink):
                        if sock in self._sockets:
                            self._sockets.discard(sock)
                            try:
                                sock.shutdown(socket.SHUT_RDWR)
                            except OSError:
                                pass
                            sock.close()
                return
            with self._lock:
                pattern = self._pattern
                if pattern is not None and direction == "up" and pattern in tail + data:
                    self.triggered.set()
                    self.mode = "cut"
                    self._pattern = None
                    self._close_listener()
                    self._drop_all()
                    return
                if source not in self._sockets:
                    return
            if pattern is not None and direction == "up":
                tail = (tail + data)[-len(pattern):]
            try:
                sink.sendall(data)
            except OSError:
                return
            with self._lock:
                self.forwarded[direction] += len(data)


# ------------------------------------------------------------------------------------------------------------
# A live IdP behind the proxies: its own PostgreSQL database, real gunicorn workers, a browser-like driver.
# test_faults.py, test_races_more.py and scripts/soak share these.

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MACHINE_POSTGRES = "postgresql://postgres@127.0.0.1:5432/postgres"
MACHINE_REDIS = "redis://127.0.0.1:6379/0"


def host_port(url: str, default_port: int) -> tuple[str, int]:
    parts = urlsplit(url)
    return parts.hostname or "127.0.0.1", parts.port or default_port


def through(url: str, proxy: FaultProxy, database: str | None = None) -> str:
    """``url`` with its host and port replaced by the proxy's (and its path by ``/database`` if given)."""
    parts = urlsplit(url)
    userinfo = parts.netloc.rpartition("@")[0]
    netloc = (userinfo + "@" if userinfo else "") + f"{proxy.host}:{proxy.port}"
    path = "/" + database if database is not None else parts.path
    return urlunsplit((parts.scheme, netloc, path, parts.query, parts.fragment))


def with_database(url: str, database: str) -> str:
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc, "/" + database, parts.query, parts.fragment))


@contextlib.contextmanager
def private_database(server_url: str, purpose: str):
    """A fresh PostgreSQL database on ``server_url``'s server (created and dropped here), as a URL."""
    import psycopg
    admin = server_url.replace("postgresql+psycopg://", "postgresql://", 1)
    name = f"idp_{purpose}_{secrets.token_hex(5)}"
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield with_database(admin, name)
    finally:
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def settings_env(settings: dict) -> dict:
    """The IdP's settings as the IDP_* environment variables it reads (JSON for anything but strings)."""
    env = dict(os.environ)
    env.pop("IDP_SETTINGS", None)
    for key, value in settings.items():
        env["IDP_" + key] = value if isinstance(value, str) else json.dumps(value)
    return env


def flask_cli(settings: dict, *args: str) -> str:
    """Run ``flask --app wsgi …`` with the IdP's settings (e.g. ``db upgrade``); its output."""
    done = subprocess.run([sys.executable, "-m", "flask", "--app", "wsgi", *args], env=settings_env(settings),
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    if done.returncode != 0:
        raise RuntimeError(f"flask {' '.join(args)} failed: {done.stderr[-2000:]}")
    return done.stdout


def write_keys(folder: str) -> str:
    """An active ES256 and RS256 signing key in ``folder`` (as ``flask idp keys ensure`` would leave)."""
    from idp import keystore
    os.makedirs(folder, exist_ok=True)
    for alg in keystore.ALGORITHMS:
        key = keystore.generate(alg, state="active")
        key.activated_at = int(time.time())
        keystore.write(folder, key)
    return folder


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class GunicornIdP:
    """``gunicorn -w N wsgi:app`` on a loopback port with the given settings; its log goes to a file."""

    def __init__(self, settings: dict, workers: int = 2, port: int | None = None, threads: int = 1,
                 timeout: int = 60):
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.settings = {k: v for k, v in settings.items() if k != "TESTING"}
        self.workers, self.threads, self.timeout = workers, threads, timeout
        self.log = tempfile.NamedTemporaryFile(prefix="idp-gunicorn-", suffix=".log", delete=False)
        self.process: subprocess.Popen | None = None

    def start(self, wait: float = 60) -> GunicornIdP:
        command = [sys.executable, "-m", "gunicorn", "-w", str(self.workers), "--threads", str(self.threads),
                   "-b", f"127.0.0.1:{self.port}", "--timeout", str(self.timeout), "--graceful-timeout", "5",
                   "--log-level", "warning", "wsgi:app"]
        self.process = subprocess.Popen(command, env=settings_env(self.settings), cwd=ROOT,
                                        stdout=self.log, stderr=subprocess.STDOUT)
        import requests
        deadline = time.monotonic() + wait
        while True:
            try:
                if requests.get(self.url + "/healthz", timeout=2).status_code == 200 \
                        and len(self.worker_pids()) == self.workers:
                    return self
            except requests.RequestException:
                pass
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError("the IdP did not start: " + self.log_tail())
            time.sleep(0.2)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)

    def __enter__(self) -> GunicornIdP:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
        self.log.close()
        with contextlib.suppress(OSError):
            os.unlink(self.log.name)

    def log_tail(self, size: int = 4000) -> str:
        self.log.flush()
        with open(self.log.name, encoding="utf-8", errors="replace") as fh:
            return fh.read()[-size:]

    def worker_pids(self) -> list[int]:
        """The gunicorn workers: the master's child processes."""
        master = self.process.pid
        try:
            with open(f"/proc/{master}/task/{master}/children") as fh:
                return sorted(int(pid) for pid in fh.read().split())
        except OSError:
            pids = []
            for entry in os.listdir("/proc"):
                if entry.isdigit():
                    try:
                        with open(f"/proc/{entry}/stat") as fh:
                            if int(fh.read().rsplit(")", 1)[1].split()[1]) == master:
                                pids.append(int(entry))
                    except (OSError, ValueError, IndexError):
                        pass
            return sorted(pids)


def rss_kib(pid: int) -> int:
    """Resident memory of a process (VmRSS in /proc/<pid>/status), KiB."""
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for {pid}")


# -- driving the pages over HTTP, as a browser does ----------------------------------------------------------

CSRF_RE = re.compile(r'name="csrf_token"[^>]*value="([^"]+)"')


def csrf_token(html: str) -> str:
    match = CSRF_RE.search(html)
    if not match:
        raise AssertionError("no CSRF token on the page: " + html[:300])
    return match.group(1)


def query(location: str) -> dict:
    return {k: v[0] for k, v in parse_qs(urlsplit(location).query).items()}


class Browser:
    """A person's browser against a live IdP (requests.Session: cookies kept, redirects followed by hand)."""

    def __init__(self, base: str, timeout: float = 30):
        import requests
        self.base, self.timeout = base, timeout
        self.http = requests.Session()

    def get(self, path: str, **kwargs):
        kwargs.setdefault("allow_redirects", False)
        return self.http.get(self._url(path), timeout=self.timeout, **kwargs)

    def post(self, path: str, data: dict, **kwargs):
        kwargs.setdefault("allow_redirects", False)
        return self.http.post(self._url(path), data=data, timeout=self.timeout, **kwargs)

    def submit(self, path: str, **fields):
        """GET the page for its CSRF token, then POST the form."""
        page = self.get(path)
        if page.status_code != 200:
            return page
        return self.post(path, {"csrf_token": csrf_token(page.text), **fields})

    def _url(self, path: str) -> str:
        return path if path.startswith("http") else self.base + path

    def authorize(self, rp, headers: dict | None = None, **extra):
        """Start an authorization request for ``rp`` (``client_id``, ``redirect_uri``): response, verifier."""
        import base64
        import hashlib
        verifier = secrets.token_urlsafe(48)
        challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()
        params = {"response_type": "code", "client_id": rp.client_id, "redirect_uri": rp.redirect_uri,
                  "scope": "openid profile phone", "state": secrets.token_urlsafe(8),
                  "nonce": secrets.token_urlsafe(8), "code_challenge": challenge,
                  "code_challenge_method": "S256",
                  **extra}
        return self.http.get(self.base + "/authorize", params=params, allow_redirects=False,
                             timeout=self.timeout, headers=headers), verifier

    def log_in(self, rp, line: str, password: str) -> tuple[str, str]:
        """The whole login through the pages; the authorization code and the PKCE verifier."""
        first, verifier = self.authorize(rp)
        assert first.status_code == 302, (first.status_code, first.text[:500])
        location = first.headers["Location"]
        if location.startswith("/flows/login/"):
            answer = self.submit(location, username=line, password=password)
            assert answer.status_code == 302, (answer.status_code, answer.text[:500])
            back = self.get(answer.headers["Location"])
            assert back.status_code == 302, (back.status_code, back.text[:500])
            location = back.headers["Location"]
        code = query(location).get("code")
        assert code, location
        return code, verifier

    def tokens(self, rp, code: str, verifier: str):
        return self.http.post(self.base + "/token", timeout=self.timeout, auth=(rp.client_id, rp.secret),
                              data={"grant_type": "authorization_code", "code": code,
                                    "redirect_uri": rp.redirect_uri, "code_verifier": verifier})

    def refresh(self, rp, refresh_token: str):
        return self.http.post(self.base + "/token", timeout=self.timeout, auth=(rp.client_id, rp.secret),
                              data={"grant_type": "refresh_token", "refresh_token": refresh_token})
