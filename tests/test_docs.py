"""Every command in docs/ is exercised (issue 10 point 5).

How the documents are read:

* ```console blocks run, in document order, against one IdP per document: a live server on loopback
  (``conftest.LiveServer``) whose app also runs the CLI, with ``KEYS_DIR`` in a temporary folder. A line that
  starts with ``$ `` is a command (a trailing ``\\`` continues it on the next line); the lines after it, up to
  the next command, are the output the document shows, compared with the real output: "…" stands for anything
  on a line, a line holding only "…" for any number of lines, and JSON shown under a ``curl`` command must be
  a subset of the JSON answered ("…" in a string, or bare, matches anything).

  - ``flask --app wsgi …`` goes through Flask's CLI runner:
    ``app.test_cli_runner().invoke(args=shlex.split(…)[3:])``;
  - ``curl …`` (GET/POST, ``-d``, ``--data-urlencode``, ``-u``, ``-H``, ``-i``) becomes a ``requests`` call to
    the live server: the documents' issuer ``https://login.selfcare.example`` is the live server's URL;
  - ``NAME=$(…)`` and ``NAME=value`` set a shell variable for the commands after it; ``$NAME`` in a later
    command is its value (a ``flask``/``curl`` command is expanded here, anything else by bash);
  - any other command, and everything after a ``|``, runs in bash in a temporary working folder (with the
    repository's ``examples/`` linked into it), with a small allow-list of programs;
  - a command ending in ``# refused`` must fail: a non-zero exit status and an ``Error:`` for the CLI, an HTTP
    status of 400 or more for curl. Every other command must succeed.

* ```python blocks are compiled, ```js blocks pass ``node --check``, ```bash/```sh blocks pass ``bash -n``,
  ```json blocks parse (and a list of trusted issuers passes the IdP's configuration check); ```http, ```text,
  ```nginx and ```ini blocks are documentation only. Any other info string fails: nothing escapes.
* The production environment block of the operator guide is loaded by ``idp.config.load``: it must pass, and
  removing any of the settings the guide says production demands must make the app refuse to start.
"""
from __future__ import annotations

import base64
import json
import os
import re
import shlex
import shutil
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote

import pytest
import requests

from idp import config as idp_config
from idp.gateway import sign

from .conftest import LiveServer, free_port
from .helpers import Factory

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
DOC_FILES = ("operator-guide.md", "relying-party-guide.md", "my3-token-exchange.md")
DOC_ISSUER = "https://login.selfcare.example"
TIMEOUT = 30

# What the operator guide configures, given to the test IdP of that guide (the doc shows these very values).
GATEWAY_KID = "gw-mi-2026"
GATEWAY_SECRET = "example-only-gateway-secret-2f6c0a9e4b7d1835"  # noqa: S105 - the documents' example
METRICS_TOKEN = "example-only-metrics-token-8d3f1b6a0c9e2e47"  # noqa: S105 - the documents' example
GATEWAY_LINE = "+393931234567"  # the guide's test SIM: an active employee account's line (seeded below)

# The programs a document may run in bash (after the CLI or curl, or on their own).
SHELL_PROGRAMS = {"printf", "echo", "openssl", "basenc", "base64", "tr", "awk", "jq", "date", "grep", "head",
                  "tail", "cut", "sed", "cat", "wc", "sort", "ls", "stat", "true", "test"}
CHECKED_ONLY = {"http", "text", "nginx", "ini"}
KNOWN_FENCES = {"console", "python", "js", "javascript", "bash", "sh", "json"} | CHECKED_ONLY
PRODUCTION_REQUIRED = ("IDP_SECRET_KEY", "IDP_HMAC_KEY", "IDP_ISSUER", "IDP_DATABASE_URL", "IDP_REDIS_URL",
                       "IDP_EMAIL_SENDER", "IDP_SMS_SENDER")


# reading the documents -------------------------------------------------------------------------------------

@dataclass
class Block:
    info: str
    text: str
    line: int  # 1-based line of the opening fence


@dataclass
class Command:
    text: str
    expected: list[str] = field(default_factory=list)
    line: int = 0

    @property
    def refused(self) -> bool:
        return self.text.rstrip().endswith("# refused")

    @property
    def body(self) -> str:
        return re.sub(r"\s*# refused$", "", self.text.rstrip())


_FENCE = re.compile(r"^(\s*)(`{3,})(.*)$")


def blocks(path: Path) -> list[Block]:
    found, lines, i = [], path.read_text(encoding="utf-8").splitlines(), 0
    while i < len(lines):
        match = _FENCE.match(lines[i])
        if not match:
            i += 1
            continue
        indent, fence, info = match.group(1), match.group(2), match.group(3).strip()
        body, j = [], i + 1
        while j < len(lines) and not re.match(rf"^\s*{fence}\s*$", lines[j]):
            body.append(lines[j][len(indent):] if lines[j].startswith(indent) else lines[j].lstrip())
            j += 1
        assert j < len(lines), f"{path.name}:{i + 1}: unclosed code fence"
        found.append(Block(info, "\n".join(body), i + 1))
        i = j + 1
    return found


def commands(block: Block) -> list[Command]:
    out: list[Command] = []
    continuing = False
    for offset, line in enumerate(block.text.splitlines(), start=1):
        if continuing:
            out[-1].text = out[-1].text[:-1].rstrip() + " " + line.strip()
        elif line.startswith("$ "):
            out.append(Command(line[2:].strip(), line=block.line + offset))
        else:
            assert out, f"line {block.line + offset}: output before any command in a console block"
            out[-1].expected.append(line)
            continue
        continuing = out[-1].text.endswith("\\")
    for command in out:
        while command.expected and not command.expected[-1].strip():
            command.expected.pop()
    return out


# running them ----------------------------------------------------------------------------------------------

def _split_pipeline(text: str) -> list[str]:
    """Split on | outside quotes and $( … )."""
    parts, current, quote_char, depth, i = [], "", None, 0, 0
    while i < len(text):
        ch = text[i]
        if quote_char:
            if ch == quote_char:
                quote_char = None
        elif ch in "'\"":
            quote_char = ch
        elif text.startswith("$(", i):
            depth += 1
            current += "$("
            i += 2
            continue
        elif ch == ")" and depth:
            depth -= 1
        elif ch == "|" and not depth:
            parts.append(current.strip())
            current = ""
            i += 1
            continue
        current += ch
        i += 1
    parts.append(current.strip())
    return parts


def _expand(text: str, variables: dict) -> str:
    """$NAME and ${NAME} outside single quotes; what a shell would do for the documents' commands."""
    out, i, in_single = "", 0, False
    while i < len(text):
        ch = text[i]
        if ch == "'":
            in_single = not in_single
        if ch == "$" and not in_single:
            assert not text.startswith("$(", i), f"command substitution inside a flask/curl command: {text}"
            match = re.match(r"\$(?:\{([A-Za-z_][A-Za-z0-9_]*)\}|([A-Za-z_][A-Za-z0-9_]*))", text[i:])
            assert match, f"a lone $ in {text}"
            name = match.group(1) or match.group(2)
            assert name in variables, f"${name} is used before the document sets it: {text}"
            out += variables[name]
            i += match.end()
            continue
        out += ch
        i += 1
    return out


@dataclass
class Outcome:
    stdout: str  # what a pipe would carry on
    shown: str  # what the terminal shows (stdout and stderr)
    ok: bool
    status: int | None = None  # HTTP status for curl
    json_body: object = None
    exit_ok: bool | None = None  # the exit status a shell sees (curl: 0 whatever the HTTP status, unless -f)

    def __post_init__(self):
        if self.exit_ok is None:
            self.exit_ok = self.ok


class DocShell:
    def __init__(self, server: LiveServer, workdir: Path):
        self.server, self.app, self.workdir = server, server.app, workdir
        self.variables: dict[str, str] = {}

    # one command line
    def run(self, command: Command) -> None:
        where = f"line {command.line}: $ {command.text}"
        assignment = re.fullmatch(r"([A-Za-z_][A-Za-z0-9_]*)=(.*)", command.body, re.S)
        if assignment and not command.body.startswith(("flask ", "curl ")):
            name, value = assignment.groups()
            if value.startswith("$(") and value.endswith(")"):
                outcome = self.pipeline(value[2:-1])
                assert outcome.exit_ok, f"{where}\n{outcome.shown}"
                value = outcome.stdout.rstrip("\n")
            else:
                value = " ".join(shlex.split(value))
            assert value, f"{where}: sets {name} to nothing"
            self.variables[name] = value
            assert not command.expected, f"{where}: an assignment shows no output"
            return
        outcome = self.pipeline(command.body)
        if os.environ.get("DOCS_SHOW"):
            print(f"\n$ {command.text}\n{outcome.shown}")
        if command.refused:
            assert not outcome.ok, \
                f"{where}: the document says it is refused, but it succeeded:\n{outcome.shown}"
            if outcome.status is None and command.body.startswith("flask "):
                assert "Error:" in outcome.shown, f"{where}\n{outcome.shown}"
        else:
            assert outcome.ok, f"{where}\n{outcome.shown}"
        if command.expected:
            self.compare(command, outcome, where)

    def pipeline(self, text: str) -> Outcome:
        parts = _split_pipeline(text)
        head, rest = parts[0], parts[1:]
        if head.startswith("flask "):
            outcome = self.flask(head)
        elif head.startswith("curl "):
            outcome = self.curl(head)
        else:
            return self.bash(text)
        if rest and outcome.exit_ok:
            piped = self.bash(" | ".join(rest), stdin=outcome.stdout)
            return Outcome(piped.stdout, piped.shown, piped.ok and outcome.ok, outcome.status,
                           exit_ok=piped.ok)
        return outcome

    def flask(self, text: str) -> Outcome:
        args = shlex.split(_expand(text, self.variables), comments=True)
        assert args[:3] == ["flask", "--app", "wsgi"], f"write CLI commands as `flask --app wsgi …`: {text}"
        result = self.app.test_cli_runner().invoke(args=args[3:])
        if result.exception is not None and not isinstance(result.exception, SystemExit):
            import traceback
            raise AssertionError(f"{text} raised:\n" + "".join(traceback.format_exception(
                type(result.exception), result.exception, result.exception.__traceback__)))
        return Outcome(result.stdout, result.output, result.exit_code == 0)

    def curl(self, text: str) -> Outcome:
        args = shlex.split(_expand(text, self.variables), comments=True)[1:]
        method, data, headers, auth, url, include, fail = None, [], {}, None, None, False, False
        i = 0
        while i < len(args):
            arg = args[i]
            if arg in ("-s", "-S", "-sS", "--silent", "--show-error"):
                pass
            elif arg in ("-f", "-sf", "-fsS", "-sSf", "--fail"):
                fail = True
            elif arg in ("-i", "--include"):
                include = True
            elif arg in ("-X", "--request"):
                i += 1
                method = args[i]
            elif arg in ("-d", "--data"):
                i += 1
                data.append(args[i])
            elif arg == "--data-urlencode":
                i += 1
                name, sep, content = args[i].partition("=")
                data.append(f"{name}={quote(content, safe='')}" if sep else quote(name, safe=""))
            elif arg in ("-u", "--user"):
                i += 1
                auth = tuple(args[i].split(":", 1))
            elif arg in ("-H", "--header"):
                i += 1
                name, _sep, value = args[i].partition(":")
                headers[name.strip()] = value.strip()
            elif arg.startswith("-"):
                raise AssertionError(f"curl option {arg} is not translated by tests/test_docs.py: {text}")
            else:
                assert url is None, f"two URLs in {text}"
                url = arg
            i += 1
        assert url and url.startswith(DOC_ISSUER + "/"), f"curl examples call {DOC_ISSUER}: {text}"
        url = self.server.url + url[len(DOC_ISSUER):]
        body = "&".join(data) if data else None
        if body is not None:
            headers.setdefault("Content-Type", "application/x-www-form-urlencoded")
        response = requests.request(method or ("POST" if body is not None else "GET"), url, data=body,
                                    headers=headers, auth=auth, allow_redirects=False, timeout=TIMEOUT)
        shown = response.text
        if include:
            head = [f"HTTP/1.1 {response.status_code} {response.reason}"]
            head += [f"{k}: {v}" for k, v in response.headers.items()]
            shown = "\n".join(head) + "\n\n" + response.text
        try:
            parsed = response.json()
        except ValueError:
            parsed = None
        ok = response.status_code < 400
        return Outcome(shown, shown, ok, response.status_code, parsed, exit_ok=ok or not fail)

    def bash(self, text: str, stdin: str | None = None) -> Outcome:
        for part in _split_pipeline(text):
            for program in re.findall(r"(?:^|\$\(|;|&&)\s*([A-Za-z0-9_./-]+)", part):
                if "=" in program:
                    continue
                assert program in SHELL_PROGRAMS, \
                    f"{program!r} is not run by tests/test_docs.py: use a ```bash block, or extend " \
                    "SHELL_PROGRAMS"
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LC_ALL": "C.UTF-8", **self.variables}
        done = subprocess.run(["bash", "-o", "pipefail", "-c", text], input=stdin, capture_output=True,
                              text=True, cwd=self.workdir, env=env, timeout=TIMEOUT)
        return Outcome(done.stdout, done.stdout + done.stderr, done.returncode == 0)

    # comparing with what the document shows
    def compare(self, command: Command, outcome: Outcome, where: str) -> None:
        expected = "\n".join(command.expected).replace(DOC_ISSUER, self.server.url)
        if outcome.json_body is not None and "|" not in _split_pipeline(command.body)[0] \
                and len(_split_pipeline(command.body)) == 1:
            try:
                shown = json.loads(_quote_ellipses(expected))
            except ValueError:
                shown = None
            if shown is not None:
                problem = _json_subset(shown, outcome.json_body, "$")
                assert problem is None, f"{where}: {problem}\nanswered: {json.dumps(outcome.json_body)}"
                return
        assert _lines_match(command.expected and expected.splitlines(), outcome.shown), \
            f"{where}: the document shows\n{expected}\nbut the command printed\n{outcome.shown}"


def _quote_ellipses(text: str) -> str:
    """JSON as documents show it: a bare … (a number or anything that changes) becomes the string "…"."""
    out, in_string, escaped = "", False, False
    for ch in text:
        if in_string:
            in_string = not (ch == '"' and not escaped)
            escaped = ch == "\\" and not escaped
        elif ch == '"':
            in_string = True
        elif ch == "…":
            out += '"…"'
            continue
        out += ch
    return out


def _json_subset(shown, actual, path: str) -> str | None:
    if isinstance(shown, dict):
        if not isinstance(actual, dict):
            return f"{path} is not an object"
        for key, value in shown.items():
            if key not in actual:
                return f"{path}.{key} is missing"
            problem = _json_subset(value, actual[key], f"{path}.{key}")
            if problem:
                return problem
        return None
    if isinstance(shown, list):
        if not isinstance(actual, list):
            return f"{path} is not a list"
        open_ended = bool(shown) and shown[-1] == "…"
        items = shown[:-1] if open_ended else shown
        if len(actual) < len(items) or (not open_ended and len(actual) != len(items)):
            return f"{path} has {len(actual)} items, the document shows {len(shown)}"
        for n, item in enumerate(items):
            problem = _json_subset(item, actual[n], f"{path}[{n}]")
            if problem:
                return problem
        return None
    if isinstance(shown, str) and "…" in shown:
        pattern = ".*".join(re.escape(piece) for piece in shown.split("…"))
        return None if re.fullmatch(pattern, str(actual), re.S) else f"{path} = {actual!r}, not {shown!r}"
    return None if shown == actual else f"{path} = {actual!r}, the document shows {shown!r}"


def _normalise(line: str) -> str:
    return re.sub(r"\s+", " ", line).strip()


def _lines_match(expected: list[str], actual: str) -> bool:
    pattern = ""
    for line in expected:
        norm = _normalise(line)
        if norm == "…":
            pattern += r"(?:[^\n]*\n)*?"
        else:
            pattern += ".*?".join(re.escape(piece) for piece in norm.split("…")) + r"\n"
    text = "\n".join(_normalise(line) for line in actual.rstrip("\n").splitlines()) + "\n"
    return re.fullmatch(pattern, text) is not None


# the test IdP of each document -----------------------------------------------------------------------------

def _trusted_issuers_example() -> list:
    for block in blocks(DOCS / "my3-token-exchange.md"):
        if block.info == "json":
            data = json.loads(block.text)
            if isinstance(data, list) and data and all("issuer" in entry for entry in data):
                return data
    raise AssertionError("the My3 guide shows no IDP_EXCHANGE_TRUSTED_ISSUERS example")


def _settings(name: str, keys_dir: str) -> dict:
    settings = {"KEYS_DIR": keys_dir, "KEYS_RELOAD_INTERVAL": 0}
    if name == "operator-guide.md":
        settings.update(AUTOLOGIN_TRUSTED_CIDRS=["127.0.0.0/8"],
                        AUTOLOGIN_GATEWAY_KEYS={GATEWAY_KID: GATEWAY_SECRET}, METRICS_TOKEN=METRICS_TOKEN)
    if name == "my3-token-exchange.md":
        settings["EXCHANGE_TRUSTED_ISSUERS"] = _trusted_issuers_example()
    return settings


def _prepare(name: str, app) -> None:
    """What the document assumes exists before its first command."""
    runner = app.test_cli_runner()
    if name in ("relying-party-guide.md", "my3-token-exchange.md"):
        # "a development IdP started by scripts/run": signing keys and the demo data
        for args in (["idp", "keys", "ensure"], ["idp", "demo"]):
            result = runner.invoke(args=args)
            assert result.exit_code == 0, result.output
    if name == "operator-guide.md":
        # the guide's gateway check needs a test SIM whose line belongs to an active employee account
        Factory(app).account(line=GATEWAY_LINE, customer_code="C0001")


@pytest.mark.live
@pytest.mark.parametrize("name", DOC_FILES)
def test_console_commands_run_as_documented(name, make_app, tmp_path, monkeypatch):
    path = DOCS / name
    runnable = [c for b in blocks(path) if b.info == "console" for c in commands(b)]
    assert runnable, f"{name} has no ```console block"
    port = free_port()
    app = make_app(ISSUER=f"http://127.0.0.1:{port}", **_settings(name, str(tmp_path / "keys")))
    _prepare(name, app)
    workdir = tmp_path / "work"
    workdir.mkdir()
    (workdir / "examples").symlink_to(ROOT / "examples")
    monkeypatch.chdir(workdir)
    server = LiveServer(app, port).start()
    try:
        shell = DocShell(server, workdir)
        for command in runnable:
            shell.run(command)
    finally:
        server.stop()


# what is not run is at least checked -----------------------------------------------------------------------

@pytest.mark.parametrize("name", DOC_FILES)
def test_every_snippet_is_checked(name, tmp_path):
    path = DOCS / name
    checked = 0
    for block in blocks(path):
        where = f"{name}:{block.line}"
        info = block.info.split()[0] if block.info else ""
        assert info in KNOWN_FENCES, f"{where}: fence ```{block.info} is neither run nor checked"
        if info == "python":
            compile(block.text, where, "exec")
        elif info in ("js", "javascript"):
            node = shutil.which("node")
            assert node, "node is needed to check the JavaScript examples"
            script = tmp_path / f"snippet-{block.line}.mjs"
            script.write_text(block.text, encoding="utf-8")
            done = subprocess.run([node, "--check", str(script)], capture_output=True, text=True,
                                  timeout=TIMEOUT)
            assert done.returncode == 0, f"{where}: {done.stderr}"
        elif info in ("bash", "sh"):
            done = subprocess.run(["bash", "-n"], input=block.text, capture_output=True, text=True,
                                  timeout=TIMEOUT)
            assert done.returncode == 0, f"{where}: {done.stderr}"
        elif info == "json":
            data = json.loads(block.text)
            if isinstance(data, list) and data and all(isinstance(e, dict) and "issuer" in e for e in data):
                config = dict(idp_config.DEFAULTS, EXCHANGE_TRUSTED_ISSUERS=data)
                idp_config.validate(config)
        elif info == "console":
            assert commands(block), f"{where}: a console block without commands"
        checked += 1
    assert checked, f"{name} has no code block"


def _production_block() -> list[tuple[str, str]]:
    for block in blocks(DOCS / "operator-guide.md"):
        if block.info not in ("sh", "bash"):
            continue
        lines = [line for line in block.text.splitlines()
                 if line.strip() and not line.lstrip().startswith("#")]
        if lines and all(line.startswith("export IDP_") for line in lines):
            pairs = []
            for line in lines:
                words = shlex.split(line, comments=True)
                assert len(words) == 2 and words[0] == "export", line
                key, _sep, value = words[1].partition("=")
                pairs.append((key, value))
            if ("IDP_DEPLOYMENT", "production") in pairs:
                return pairs
    raise AssertionError("the operator guide shows no production environment "
                         "(export IDP_DEPLOYMENT=production …)")


def _load(pairs, monkeypatch) -> None:
    from flask import Flask
    for key in list(os.environ):
        if key.startswith("IDP_"):
            monkeypatch.delenv(key)
    for key, value in pairs:
        monkeypatch.setenv(key, value)
    app = Flask("idp", instance_path=tempfile.mkdtemp(prefix="idp-docs-"))
    idp_config.load(app)


def test_documented_production_environment_starts_and_each_requirement_is_enforced(monkeypatch):
    pairs = _production_block()
    _load(pairs, monkeypatch)  # the documented configuration is accepted as it stands
    names = {key for key, _value in pairs}
    for required in PRODUCTION_REQUIRED:
        assert required in names, f"the production environment lacks {required}"
        with pytest.raises(idp_config.ConfigError, match="refused in production"):
            _load([(k, v) for k, v in pairs if k != required], monkeypatch)
    # the gateway secrets it shows are long enough for production, and they are the ones the test IdP trusts
    keys = json.loads(dict(pairs)["IDP_AUTOLOGIN_GATEWAY_KEYS"])
    assert keys == {GATEWAY_KID: GATEWAY_SECRET}
    assert dict(pairs)["IDP_METRICS_TOKEN"] == METRICS_TOKEN


def test_worked_gateway_signature_is_the_one_the_idp_computes():
    """The operator guide's worked example: the command's output is what idp.gateway.sign computes."""
    text = (DOCS / "operator-guide.md").read_text(encoding="utf-8")
    match = re.search(r"printf '%s' '([^|']+)\|(\d+)\|([A-Za-z0-9_-]+)' \| "
                      r"openssl dgst -sha256 -hmac '([^']+)' -binary \| basenc --base64url \| tr -d '='\n"
                      r"(\S+)\n", text)
    assert match, "the worked signature example is missing from the operator guide"
    number, ts, nonce, secret, shown = match.groups()
    assert secret == GATEWAY_SECRET
    assert sign(secret, number, int(ts), nonce) == shown
    mac = base64.urlsafe_b64decode(shown + "=" * (-len(shown) % 4))
    assert len(mac) == 32  # HMAC-SHA256, base64url without padding


def test_readme_links_every_document():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    for name in DOC_FILES:
        assert f"docs/{name}" in readme, f"README.md does not link docs/{name}"
        assert (DOCS / name).is_file()
