"""Real receivers on loopback for the senders (issue 3 point 8): an SMTP server and an HTTP SMS gateway.

Nothing here is a mock: ``SmtpReceiver`` is an aiosmtpd server speaking real SMTP (optionally STARTTLS or implicit
TLS with a certificate made at test time by a private CA, and optionally AUTH LOGIN/PLAIN), and ``SmsGateway`` is
a real HTTP server answering the JSON POST the IdP makes. Both record what reached them, so a test (or a browser
test) reads the one-time code from the far side exactly as a user would read it from the phone or the mailbox::

    with SmtpReceiver() as smtp, SmsGateway() as gateway:
        ...                                   # point EMAIL_SENDER/SMS_SENDER at smtp.port / gateway.url
        code = smtp.last_code("mario@acme.example")
        code = gateway.last_code("+393931234567")

Both start on a free 127.0.0.1 port and stop cleanly (``stop()`` or leaving the ``with`` block).
"""
from __future__ import annotations

import datetime
import email
import ipaddress
import json
import os
import re
import shutil
import socket
import ssl
import tempfile
import threading
import time
import warnings
from dataclasses import dataclass, field
from email import policy
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword

CODE_RE = re.compile(r"(?<!\d)(\d{6})(?!\d)")

SMTP_USER = "idp-relay"
SMTP_PASSWORD = "relay-secret-42"  # noqa: S105 - the loopback test server's fixed credentials


def extract_code(text: str) -> str:
    """The 6-digit one-time code in ``text`` (the first one; fails the test when there is none)."""
    match = CODE_RE.search(text or "")
    assert match, f"no 6-digit code in {text!r}"
    return match.group(1)


class _Recorder:
    """Thread-safe list of received items addressed to someone, with waiting."""

    def __init__(self):
        self._items: list = []
        self._cond = threading.Condition()
        self._cursor: dict[str, int] = {}

    def _record(self, item) -> None:
        with self._cond:
            self._items.append(item)
            self._cond.notify_all()

    @staticmethod
    def _addressed_to(item, to: str) -> bool:
        raise NotImplementedError

    def messages(self, to: str | None = None) -> list:
        """Everything received so far (to ``to`` if given), oldest first."""
        with self._cond:
            return [m for m in self._items if to is None or self._addressed_to(m, to)]

    def clear(self) -> None:
        with self._cond:
            self._items.clear()
            self._cursor.clear()

    def wait_for(self, to: str, timeout: float = 5.0):
        """The next message to ``to`` that no earlier ``wait_for(to)`` returned; waits up to ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        key = to.lower()
        with self._cond:
            while True:
                start = self._cursor.get(key, 0)
                for index in range(start, len(self._items)):
                    if self._addressed_to(self._items[index], to):
                        self._cursor[key] = index + 1
                        return self._items[index]
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise AssertionError(f"nothing new reached {to} within {timeout}s")
                self._cond.wait(remaining)

    def last(self, to: str, timeout: float = 5.0):
        """The newest message to ``to``, waiting up to ``timeout`` seconds for a first one."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                found = [m for m in self._items if self._addressed_to(m, to)]
                if found:
                    return found[-1]
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise AssertionError(f"nothing reached {to} within {timeout}s")
                self._cond.wait(remaining)

    def last_code(self, to: str, timeout: float = 5.0) -> str:
        """The 6-digit code in the newest message to ``to``."""
        return extract_code(self.last(to, timeout).text)


# --------------------------------------------------------------------------------------------------- TLS material

@dataclass
class TlsFiles:
    """A private CA and a server certificate for 127.0.0.1/localhost, written to a temporary folder."""

    folder: str
    ca_file: str  # PEM of the CA: what the client must trust (SMTP_CA_FILE)
    cert_file: str  # PEM of the server certificate followed by the CA
    key_file: str  # PEM of the server's private key

    def server_context(self) -> ssl.SSLContext:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(self.cert_file, self.key_file)
        return context

    def remove(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)


def make_tls_files() -> TlsFiles:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    now = datetime.datetime.now(datetime.timezone.utc)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Selfcare IdP test relay CA")])
    ca_ski = x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key())
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(ca_name).issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                     content_commitment=False, key_encipherment=False, data_encipherment=False,
                                     key_agreement=False, encipher_only=False, decipher_only=False), critical=True)
        .add_extension(ca_ski, critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost"),
                                                    x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                       critical=False)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    folder = tempfile.mkdtemp(prefix="idp-tls-")
    pem = serialization.Encoding.PEM
    files = TlsFiles(folder, os.path.join(folder, "ca.pem"), os.path.join(folder, "cert.pem"),
                     os.path.join(folder, "key.pem"))
    with open(files.ca_file, "wb") as fh:
        fh.write(ca_cert.public_bytes(pem))
    with open(files.cert_file, "wb") as fh:
        fh.write(cert.public_bytes(pem) + ca_cert.public_bytes(pem))
    with open(files.key_file, "wb") as fh:
        fh.write(key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    return files


# --------------------------------------------------------------------------------------------------- SMTP

@dataclass
class ReceivedMail:
    mail_from: str  # envelope sender (MAIL FROM)
    rcpt_tos: list[str]  # envelope recipients (RCPT TO)
    from_: str  # From: header, decoded
    to: str  # To: header, decoded
    subject: str  # Subject: header, decoded (RFC 2047)
    text: str | None  # the text/plain part
    html: str | None  # the text/html part
    headers: dict[str, str]
    raw: bytes
    tls: bool  # the message travelled over TLS (STARTTLS or implicit)
    login: str | None  # the AUTH user, if the client logged in
    received_at: float = field(default_factory=time.time)


def _content(part) -> str | None:
    """A decoded MIME part with the wire's CRLF line ends turned back into "\\n"."""
    return None if part is None else part.get_content().replace("\r\n", "\n")


class _BoundController(Controller):
    """aiosmtpd's threaded controller serving on a socket already bound to a kernel-chosen port."""

    def __init__(self, handler, sock: socket.socket, **kwargs):
        super().__init__(handler, **kwargs)
        self._sock = sock

    def _create_server(self):
        return self.loop.create_server(self._factory_invoker, sock=self._sock, ssl=self.ssl_context)

    def factory(self):
        with warnings.catch_warnings():  # AUTH over implicit TLS is encrypted: aiosmtpd's warning does not apply
            warnings.filterwarnings("ignore", "Requiring AUTH while not requiring TLS", UserWarning)
            return super().factory()


class SmtpReceiver(_Recorder):
    """A real SMTP server on 127.0.0.1 that keeps every message it accepts.

    ``security``: ``"none"`` (plain), ``"starttls"`` (offers STARTTLS and requires it before MAIL) or ``"tls"``
    (implicit TLS from the first byte). With TLS, ``tls_files.ca_file`` is what the client must trust
    (``SMTP_CA_FILE``). ``auth=True`` requires AUTH LOGIN/PLAIN as ``SMTP_USER``/``SMTP_PASSWORD`` (only over TLS)
    before any mail. ``reject_rcpt`` lists addresses answered ``550`` at RCPT TO.
    """

    def __init__(self, security: str = "none", auth: bool = False, reject_rcpt: tuple[str, ...] = ()):
        super().__init__()
        assert security in ("none", "starttls", "tls")
        self.security, self.auth = security, auth
        self.reject_rcpt = {a.lower() for a in reject_rcpt}
        self.tls_files = make_tls_files() if security != "none" else None
        self.auth_attempts: list[tuple[str, str, bool]] = []  # (mechanism, login, accepted)
        self.host = "127.0.0.1"
        self.port: int | None = None
        self._controller: Controller | None = None

    @property
    def ca_file(self) -> str:
        return self.tls_files.ca_file if self.tls_files else ""

    @staticmethod
    def _addressed_to(item: ReceivedMail, to: str) -> bool:
        return to.lower() in (r.lower() for r in item.rcpt_tos)

    # aiosmtpd handler hooks
    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):  # noqa: N802
        if address.lower() in self.reject_rcpt:
            return "550 5.1.1 mailbox unavailable"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server, session, envelope):  # noqa: N802
        parsed = email.message_from_bytes(envelope.original_content or envelope.content, policy=policy.default)
        text_part = parsed.get_body(preferencelist=("plain",))
        html_part = parsed.get_body(preferencelist=("html",))
        transport = server.transport
        login = session.login_data.decode() if isinstance(session.login_data, bytes) else session.login_data
        self._record(ReceivedMail(
            mail_from=envelope.mail_from, rcpt_tos=list(envelope.rcpt_tos),
            from_=str(parsed["From"] or ""), to=str(parsed["To"] or ""), subject=str(parsed["Subject"] or ""),
            text=_content(text_part), html=_content(html_part),
            headers={k: str(v) for k, v in parsed.items()}, raw=envelope.original_content or envelope.content,
            tls=transport is not None and transport.get_extra_info("ssl_object") is not None,
            login=login if session.authenticated else None))
        return "250 OK message accepted"

    def _authenticator(self, server, session, envelope, mechanism, auth_data):
        ok = (isinstance(auth_data, LoginPassword) and auth_data.login == SMTP_USER.encode()
              and auth_data.password == SMTP_PASSWORD.encode())
        login = auth_data.login.decode(errors="replace") if isinstance(auth_data, LoginPassword) else ""
        self.auth_attempts.append((mechanism, login, ok))
        return AuthResult(success=ok, handled=False, auth_data=auth_data if ok else None)

    def start(self) -> SmtpReceiver:
        kwargs: dict = {"server_hostname": "localhost", "ready_timeout": 5.0}
        if self.security == "starttls":
            kwargs.update(tls_context=self.tls_files.server_context(), require_starttls=True)
        elif self.security == "tls":
            kwargs.update(ssl_context=self.tls_files.server_context())
        if self.auth:
            # over implicit TLS the whole session is encrypted, but aiosmtpd only counts STARTTLS as TLS
            kwargs.update(authenticator=self._authenticator, auth_required=True,
                          auth_require_tls=self.security == "starttls", auth_exclude_mechanism=["CRAM-MD5"])
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.bind((self.host, 0))  # the kernel picks a free port: no race with other processes
        self.port = sock.getsockname()[1]
        self._controller = _BoundController(self, sock, hostname=self.host, port=self.port, **kwargs)
        self._controller.start()
        return self

    def stop(self) -> None:
        if self._controller is not None:
            self._controller.stop()
            self._controller = None
        if self.tls_files is not None:
            self.tls_files.remove()

    def __enter__(self) -> SmtpReceiver:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def settings(self) -> dict:
        """The IdP settings that send e-mail to this server."""
        settings = {"EMAIL_SENDER": "smtp", "SMTP_HOST": self.host, "SMTP_PORT": self.port,
                    "SMTP_SECURITY": self.security, "SMTP_CA_FILE": self.ca_file, "SMTP_TIMEOUT": 5}
        if self.auth:
            settings.update(SMTP_USERNAME=SMTP_USER, SMTP_PASSWORD=SMTP_PASSWORD)
        return settings


# --------------------------------------------------------------------------------------------------- SMS gateway

@dataclass
class GatewayRequest:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes
    json: dict | None
    status: int  # what the gateway answered (0: it hung and never answered)
    received_at: float = field(default_factory=time.time)

    @property
    def to(self) -> str:
        return str((self.json or {}).get("to", ""))

    @property
    def text(self) -> str:
        return str((self.json or {}).get("text", ""))

    @property
    def sender(self) -> str:
        return str((self.json or {}).get("from", ""))


class SmsGateway(_Recorder):
    """A real HTTP SMS gateway on 127.0.0.1: receives ``POST {"to", "from", "text"}`` as JSON.

    ``requests`` lists every request (with headers and the status answered); ``messages()``, ``wait_for``,
    ``last`` and ``last_code`` see only the SMS it accepted (answered 2xx). With ``token`` set, a request without
    ``Authorization: Bearer <token>`` is answered 401. Behaviour, switchable at any time: ``answer_ok()``
    (default), ``fail_then_ok(times, status=503)``, ``reject(status=400)``, ``hang(seconds)`` (answers nothing for
    that long: longer than the client's timeout).
    """

    def __init__(self, token: str | None = None, path: str = "/sms"):
        super().__init__()
        self.token, self.path = token, path
        self.requests: list[GatewayRequest] = []
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._mode, self._fail_left, self._status, self._hang = "ok", 0, 200, 0.0
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self.url = ""

    @staticmethod
    def _addressed_to(item: GatewayRequest, to: str) -> bool:
        return item.to == to

    # behaviour
    def answer_ok(self) -> None:
        with self._lock:
            self._mode = "ok"

    def fail_then_ok(self, times: int, status: int = 503) -> None:
        with self._lock:
            self._mode, self._fail_left, self._status = "fail_then_ok", times, status

    def reject(self, status: int = 400) -> None:
        with self._lock:
            self._mode, self._status = "reject", status

    def hang(self, seconds: float) -> None:
        with self._lock:
            self._mode, self._hang = "hang", seconds

    def _decide(self, authorized: bool) -> tuple[int, float]:
        """(status to answer, seconds to hang first) for the next request."""
        with self._lock:
            if self._mode == "hang":
                return 0, self._hang
            if not authorized:
                return 401, 0.0
            if self._mode == "reject":
                return self._status, 0.0
            if self._mode == "fail_then_ok" and self._fail_left > 0:
                self._fail_left -= 1
                return self._status, 0.0
            return 200, 0.0

    def _handler(self):
        gateway = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format, *args):  # noqa: A002 - keep the test output quiet
                pass

            def _answer(self, status: int, payload: dict) -> None:
                body = json.dumps(payload).encode()
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)
                except OSError:
                    pass  # the client gave up (timeout): nothing to answer to

            def do_POST(self):  # noqa: N802
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                try:
                    parsed = json.loads(body)
                except ValueError:
                    parsed = None
                authorized = gateway.token is None or \
                    self.headers.get("Authorization") == f"Bearer {gateway.token}"
                status, hang = gateway._decide(authorized)
                if status == 200 and (self.path != gateway.path or not isinstance(parsed, dict)
                                      or not {"to", "from", "text"} <= parsed.keys()):
                    status = 404 if self.path != gateway.path else 400
                record = GatewayRequest("POST", self.path, dict(self.headers.items()), body,
                                        parsed if isinstance(parsed, dict) else None, status)
                with gateway._lock:
                    gateway.requests.append(record)
                if hang:
                    gateway._stopping.wait(hang)
                    self.close_connection = True
                    return
                if 200 <= status < 300:
                    gateway._record(record)
                    self._answer(status, {"id": f"msg-{len(gateway.requests)}", "status": "queued"})
                else:
                    self._answer(status, {"error": "refused" if status < 500 else "unavailable"})

        return Handler

    def start(self) -> SmsGateway:
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}{self.path}"
        self._thread = threading.Thread(target=self._server.serve_forever, args=(0.05,), name="sms-gateway",
                                        daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stopping.set()  # releases hanging handlers
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._thread.join(5)
            self._server = None

    def __enter__(self) -> SmsGateway:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def settings(self) -> dict:
        """The IdP settings that send SMS to this gateway."""
        settings = {"SMS_SENDER": "http", "SMS_GATEWAY_URL": self.url}
        if self.token:
            settings["SMS_GATEWAY_AUTH_HEADER"] = f"Authorization: Bearer {self.token}"
        return settings
