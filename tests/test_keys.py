"""Signing-key lifecycle (issue 7): the key store, every `idp keys` command and refusal, the JWKS per state.

Each test has its own key folder and an app that re-reads it on every use (KEYS_RELOAD_INTERVAL=0), so what a
command changed is what the next request sees. The live multi-worker proof is tests/test_key_rotation_live.py.
"""
from __future__ import annotations

import base64
import hashlib
import json
import multiprocessing
import os
import stat
import threading
import time

import pytest
from joserfc import jwt

from idp import keystore
from idp.extensions import db
from idp.models import AuditEvent

from .helpers import Journey, basic

EC_PUBLIC = {"kty", "crv", "x", "y", "kid", "alg", "use"}
RSA_PUBLIC = {"kty", "n", "e", "kid", "alg", "use"}


def _run(app, *args):
    return app.test_cli_runner().invoke(args=["idp", "keys", *args])


def _ok(app, *args) -> str:
    result = _run(app, *args)
    assert result.exit_code == 0, result.output
    return result.output


def _refused(app, *args) -> str:
    result = _run(app, *args)
    assert result.exit_code != 0 and "Error:" in result.output, result.output
    return result.output


@pytest.fixture
def folder(tmp_path):
    return str(tmp_path / "keys")


@pytest.fixture
def kapp(make_app, folder):
    """An app on its own key folder (one active ES256 and RS256 key), re-reading the folder at every use."""
    app = make_app(KEYS_DIR=folder, KEYS_RELOAD_INTERVAL=0)
    _ok(app, "ensure")
    return app


def _stored(folder) -> dict[str, keystore.StoredKey]:
    return {k.kid: k for k in keystore.read_all(folder)}


def _kid(folder, alg, state) -> str:
    [kid] = [k.kid for k in keystore.read_all(folder) if k.alg == alg and k.state == state]
    return kid


def _generated_kid(output: str) -> str:
    [line] = [line for line in output.splitlines() if line.startswith("generate\t")]
    return line.split("\t")[1]


def _jwks(client) -> dict[str, dict]:
    response = client.get("/jwks.json")
    assert response.status_code == 200
    return {k["kid"]: k for k in response.json["keys"]}


def _header(token: str) -> dict:
    part = token.split(".")[0]
    return json.loads(base64.urlsafe_b64decode(part + "=" * (-len(part) % 4)))


def _thumbprint(jwk: dict) -> str:
    """RFC 7638 §3, computed here without joserfc: the required members, sorted, no whitespace, SHA-256."""
    members = ("crv", "kty", "x", "y") if jwk["kty"] == "EC" else ("e", "kty", "n")
    canonical = json.dumps({m: jwk[m] for m in members}, separators=(",", ":"), sort_keys=True)
    return base64.urlsafe_b64encode(hashlib.sha256(canonical.encode()).digest()).rstrip(b"=").decode()


def _bearer(token):
    return {"Authorization": "Bearer " + token}


def _login(app, factory):
    """An account and a relying party; returns (rp, browser, tokens) after a code flow."""
    factory.account()
    rp = factory.rp(post_logout_redirect_uris=["https://rp.example/bye"])
    browser = app.test_client()
    return rp, browser, Journey(browser, rp).tokens()


def _introspect(client, rp, token) -> dict:
    response = client.post("/introspect", data={"token": token}, headers=basic(rp.client_id, rp.secret))
    assert response.status_code == 200
    return response.json


def _key_events(app) -> list[dict]:
    with app.app_context():
        rows = db.session.query(AuditEvent).filter_by(type="key.changed").order_by(AuditEvent.id).all()
        return [{"outcome": r.outcome, **(r.details or {})} for r in rows]


# the store ------------------------------------------------------------------------------------------------------

def test_files_are_private_the_folder_is_ours_and_kid_is_the_thumbprint(kapp, folder):
    assert stat.S_IMODE(os.stat(folder).st_mode) == 0o700, "the folder we create is the owner's only"
    _ok(kapp, "generate", "--alg", "RS256")
    names = os.listdir(folder)
    assert ".lock" in names and len([n for n in names if n.endswith(".json")]) == 3
    for name in names:
        assert stat.S_IMODE(os.stat(os.path.join(folder, name)).st_mode) == 0o600, name
    published = _jwks(kapp.test_client())
    for key in keystore.read_all(folder):
        assert key.kid == _thumbprint(published[key.kid]) == _thumbprint(key.private_jwk)
        assert key.created_at == key.published_at and key.alg in ("ES256", "RS256")
    [es] = [k for k in keystore.read_all(folder) if k.alg == "ES256"]
    assert es.private_jwk["kty"] == "EC" and es.private_jwk["crv"] == "P-256" and es.state == "active"


def test_es256_is_the_default_and_rs256_is_available(kapp, folder):
    default = _generated_kid(_ok(kapp, "generate"))
    rsa = _generated_kid(_ok(kapp, "generate", "--alg", "RS256"))
    stored = _stored(folder)
    assert stored[default].alg == "ES256" and stored[rsa].alg == "RS256"
    modulus = stored[rsa].private_jwk["n"]
    assert stored[rsa].private_jwk["kty"] == "RSA"
    assert len(base64.urlsafe_b64decode(modulus + "=" * (-len(modulus) % 4))) * 8 == 2048
    assert _refused(kapp, "generate", "--alg", "HS256")


def test_jwks_per_state_public_members_only_for_ec_and_rsa(kapp, folder):
    client = kapp.test_client()
    old_es, old_rs = _kid(folder, "ES256", "active"), _kid(folder, "RS256", "active")
    new_es = _generated_kid(_ok(kapp, "generate"))
    new_rs = _generated_kid(_ok(kapp, "generate", "--alg", "RS256"))
    spare = _generated_kid(_ok(kapp, "generate"))
    _ok(kapp, "activate", new_es, "--force")
    _ok(kapp, "activate", new_rs, "--force")
    _ok(kapp, "revoke", spare)
    states = {k.kid: k.state for k in keystore.read_all(folder)}
    assert states == {old_es: "retired", old_rs: "retired", new_es: "active", new_rs: "active", spare: "revoked"}
    response = client.get("/jwks.json")
    assert response.mimetype == "application/jwk-set+json"
    published = {k["kid"]: k for k in response.json["keys"]}
    assert set(published) == {old_es, old_rs, new_es, new_rs}, "next, active and retired; never revoked"
    for kid, jwk in published.items():
        assert set(jwk) == (EC_PUBLIC if jwk["kty"] == "EC" else RSA_PUBLIC), jwk  # no d, p, q, dp, dq, qi
        assert jwk["use"] == "sig" and jwk["alg"] == ("ES256" if jwk["kty"] == "EC" else "RS256")
    assert b'"d"' not in response.data and b'"p"' not in response.data
    next_only = _generated_kid(_ok(kapp, "generate", "--alg", "RS256"))
    assert next_only in _jwks(client), "a next key is published from its creation"


def test_jwks_caching_headers_and_etag_follow_the_key_set(kapp):
    client = kapp.test_client()
    first = client.get("/jwks.json")
    assert first.headers["Cache-Control"] == f"public, max-age={kapp.config['JWKS_MAX_AGE']}"
    etag = first.headers["ETag"]
    unchanged = client.get("/jwks.json", headers={"If-None-Match": etag})
    assert unchanged.status_code == 304 and unchanged.data == b"" and unchanged.headers["ETag"] == etag
    _ok(kapp, "generate")
    changed = client.get("/jwks.json", headers={"If-None-Match": etag})
    assert changed.status_code == 200 and changed.headers["ETag"] != etag
    assert len(changed.json["keys"]) == len(first.json["keys"]) + 1


# activate ---------------------------------------------------------------------------------------------------------

def test_activation_guard_then_activate_retires_the_previous_key(make_app, folder, factory):
    # guard = KEYS_RELOAD_INTERVAL 0 + JWKS_MAX_AGE 1 + KEYS_ACTIVATION_MARGIN 1 = 2 s
    app = make_app(KEYS_DIR=folder, KEYS_RELOAD_INTERVAL=0, JWKS_MAX_AGE=1, KEYS_ACTIVATION_MARGIN=1)
    _ok(app, "ensure")
    old = _kid(folder, "ES256", "active")
    rp, browser, before = _login(app, factory)
    assert _header(before["access_token"])["kid"] == old == _header(before["id_token"])["kid"]
    new = _generated_kid(_ok(app, "generate"))
    refused = _refused(app, "activate", new)
    assert "wait" in refused and "--force" in refused
    assert _stored(folder)[new].state == "next" and _stored(folder)[old].state == "active"
    time.sleep(2.1)
    output = _ok(app, "activate", new[:12])  # an unambiguous prefix is enough
    assert f"activate\t{new}\tES256\tactive" in output and f"retire\t{old}\tES256\tretired" in output
    stored = _stored(folder)
    assert stored[new].state == "active" and stored[new].activated_at >= stored[new].published_at + 2
    assert stored[old].state == "retired" and stored[old].retired_at is not None
    after = Journey(browser, rp).tokens()
    assert _header(after["access_token"])["kid"] == new == _header(after["id_token"])["kid"]
    # the retired key still verifies what it signed: userinfo, introspection and a logout hint
    assert browser.get("/userinfo", headers=_bearer(before["access_token"])).status_code == 200
    assert _introspect(browser, rp, before["access_token"])["active"] is True
    assert old in _jwks(browser) and new in _jwks(browser)
    logout = browser.get("/logout", query_string={"id_token_hint": before["id_token"],
                                                  "post_logout_redirect_uri": "https://rp.example/bye"})
    assert logout.status_code == 302 and logout.headers["Location"].startswith("https://rp.example/bye")
    assert "already active" in _ok(app, "activate", new)


def test_activate_refusals(kapp, folder):
    young = _generated_kid(_ok(kapp, "generate"))
    assert "wait" in _refused(kapp, "activate", young)  # default guard: 5 + 300 + 60 s
    assert "no key" in _refused(kapp, "activate", "does-not-exist")
    assert "no key" in _refused(kapp, "activate", young[:5])  # a prefix must have 8 characters at least
    revoked = _generated_kid(_ok(kapp, "generate"))
    _ok(kapp, "revoke", revoked)
    assert "revoked" in _refused(kapp, "activate", revoked, "--force")
    assert _stored(folder)[young].state == "next"
    assert "already active" in _refused(kapp, "generate", "--activate")


def test_forced_activation_and_rollback_to_a_retired_key(make_app, folder):
    kapp = make_app(KEYS_DIR=folder, KEYS_RELOAD_INTERVAL=0, JWKS_MAX_AGE=0, KEYS_ACTIVATION_MARGIN=1)
    _ok(kapp, "ensure")
    client = kapp.test_client()
    first = _kid(folder, "ES256", "active")
    second = _generated_kid(_ok(kapp, "generate"))
    _ok(kapp, "activate", second, "--force")
    assert _stored(folder)[first].state == "retired"
    # going back to the previous key: it never left the JWKS; the guard counts from its publication
    time.sleep(1.1)
    output = _ok(kapp, "activate", first)
    assert f"retire\t{second}" in output
    stored = _stored(folder)
    assert stored[first].state == "active" and stored[first].retired_at is None
    assert stored[second].state == "retired"
    with kapp.app_context():
        assert keystore.keyring().signing_key("ES256").kid == first
    assert set(_jwks(client)) >= {first, second}


# retire -----------------------------------------------------------------------------------------------------------

def test_retire_keeps_a_key_published_and_refuses_the_active_and_revoked_ones(kapp, folder):
    client = kapp.test_client()
    active = _kid(folder, "ES256", "active")
    spare = _generated_kid(_ok(kapp, "generate"))
    assert "activate its successor" in _refused(kapp, "retire", active)
    assert _stored(folder)[active].state == "active"
    assert f"retire\t{spare}\tES256\tretired" in _ok(kapp, "retire", spare)
    assert spare in _jwks(client) and _stored(folder)[spare].activated_at is None
    with kapp.app_context():
        assert keystore.keyring().signing_key("ES256").kid == active
    assert "already retired" in _ok(kapp, "retire", spare)
    gone = _generated_kid(_ok(kapp, "generate"))
    _ok(kapp, "revoke", gone)
    assert "revoked" in _refused(kapp, "retire", gone)


# prune ------------------------------------------------------------------------------------------------------------

def test_prune_waits_until_every_token_of_a_retired_key_expired(make_app, folder):
    # prune delay = KEYS_RELOAD_INTERVAL 0 + max(ACCESS_TOKEN_TTL 2, ID_TOKEN_TTL 1) + KEYS_CLOCK_SKEW 1 = 3 s
    app = make_app(KEYS_DIR=folder, KEYS_RELOAD_INTERVAL=0, ACCESS_TOKEN_TTL=2, ID_TOKEN_TTL=1, KEYS_CLOCK_SKEW=1)
    _ok(app, "ensure")
    old = _kid(folder, "ES256", "active")
    new = _generated_kid(_ok(app, "generate"))
    never_signed = _generated_kid(_ok(app, "generate"))
    pending = _generated_kid(_ok(app, "generate"))
    revoked = _generated_kid(_ok(app, "generate"))
    _ok(app, "revoke", revoked)
    _ok(app, "retire", never_signed)
    _ok(app, "activate", new, "--force")
    output = _ok(app, "prune")
    assert f"prune\t{never_signed}\tES256\tremoved" in output, "a key that never signed has no tokens to wait for"
    assert old not in output and old in _stored(folder)
    assert "nothing to prune" in _ok(app, "prune")
    time.sleep(3.1)
    assert f"prune\t{old}\tES256\tremoved" in _ok(app, "prune")
    stored = _stored(folder)
    assert set(stored) == {new, pending, revoked, _kid(folder, "RS256", "active")}, "never next/active/revoked"
    assert not os.path.exists(os.path.join(folder, f"key-{old}.json"))
    assert old not in _jwks(app.test_client())


def test_prune_help_states_the_rule(kapp):
    text = " ".join(_ok(kapp, "prune", "--help").split())
    for word in ("retired", "ACCESS_TOKEN_TTL", "ID_TOKEN_TTL", "KEYS_CLOCK_SKEW", "KEYS_RELOAD_INTERVAL",
                 "Never next, active or revoked"):
        assert word in text, word


# rotate -----------------------------------------------------------------------------------------------------------

def test_rotate_is_the_idempotent_safe_sequence(make_app, folder):
    app = make_app(KEYS_DIR=folder, KEYS_RELOAD_INTERVAL=0, JWKS_MAX_AGE=1, KEYS_ACTIVATION_MARGIN=1,
                   ACCESS_TOKEN_TTL=1, ID_TOKEN_TTL=1, KEYS_CLOCK_SKEW=0)
    _ok(app, "ensure")
    first = _kid(folder, "ES256", "active")
    rs_active = _kid(folder, "RS256", "active")
    out = _ok(app, "rotate", "--alg", "ES256", "--period", "0")
    nxt = _generated_kid(out)
    assert _stored(folder)[nxt].state == "next"
    assert "nothing to do" in _ok(app, "rotate", "--alg", "ES256", "--period", "0"), "the guard holds"
    time.sleep(2.1)
    assert "nothing to do" in _ok(app, "rotate", "--alg", "ES256"), "the active key has not served 90 days"
    out = _ok(app, "rotate", "--alg", "ES256", "--period", "0")
    assert f"activate\t{nxt}" in out and f"retire\t{first}" in out
    assert "nothing to do" not in _ok(app, "rotate", "--alg", "ES256", "--period", "0")  # a new next key
    time.sleep(1.1)
    out = _ok(app, "rotate", "--alg", "ES256", "--period", "0")
    assert f"prune\t{first}" in out and "activate" not in out, "the new next key is still too young"
    stored = _stored(folder)
    assert stored[nxt].state == "active" and first not in stored and stored[rs_active].state == "active"
    # without --alg: every algorithm with an active key gets a next key
    out = _ok(app, "rotate")
    assert "RS256\tnext" in out and "ES256" not in out


def test_rotate_needs_an_active_key_somewhere(make_app, tmp_path):
    app = make_app(KEYS_DIR=str(tmp_path / "empty"), KEYS_RELOAD_INTERVAL=0)
    assert "keys ensure" in _refused(app, "rotate")


# revoke -----------------------------------------------------------------------------------------------------------

def test_revoke_removes_the_key_and_refuses_its_tokens_everywhere(kapp, folder, factory):
    rp, browser, tokens = _login(kapp, factory)
    signer = _header(tokens["access_token"])["kid"]
    assert browser.get("/userinfo", headers=_bearer(tokens["access_token"])).status_code == 200
    successor = _generated_kid(_ok(kapp, "generate"))
    refused = _refused(kapp, "revoke", signer)
    assert "--replace" in refused and _stored(folder)[signer].state == "active"
    output = _ok(kapp, "revoke", signer, "--replace")
    assert f"activate\t{successor}\tES256\tactive" in output and f"revoke\t{signer}\tES256\trevoked" in output
    assert "published only now" in output, "the successor was not published long enough: the operator is told"
    stored = _stored(folder)[signer]
    assert stored.state == "revoked" and stored.revoked_at and stored.private_jwk == {}, "private key destroyed"
    assert stored.public_jwk["kid"] == signer and "d" not in stored.public_jwk
    assert signer not in _jwks(browser)
    # its tokens: refused by userinfo and introspection, and as a logout hint
    userinfo = browser.get("/userinfo", headers=_bearer(tokens["access_token"]))
    assert userinfo.status_code == 401 and 'error="invalid_token"' in userinfo.headers["WWW-Authenticate"]
    assert _introspect(browser, rp, tokens["access_token"]) == {"active": False}
    hint = browser.get("/logout", query_string={"id_token_hint": tokens["id_token"],
                                                "post_logout_redirect_uri": "https://rp.example/bye"})
    assert hint.status_code == 400 and "Location" not in hint.headers
    # the refresh token is opaque: the grant goes on, with tokens from the new key
    refreshed = browser.post("/token", data={"grant_type": "refresh_token", "refresh_token": tokens["refresh_token"]},
                             headers=basic(rp.client_id, rp.secret))
    assert refreshed.status_code == 200 and _header(refreshed.json["access_token"])["kid"] == successor
    assert browser.get("/userinfo", headers=_bearer(refreshed.json["access_token"])).status_code == 200
    assert "already revoked" in _ok(kapp, "revoke", signer)
    with kapp.app_context():
        assert signer in keystore.keyring().revoked_kids


def test_revoke_replace_without_a_next_key_generates_one(kapp, folder):
    rs = _kid(folder, "RS256", "active")
    output = _ok(kapp, "revoke", rs, "--replace")
    [line] = [line for line in output.splitlines() if line.startswith("activate\t")]
    successor = line.split("\t")[1]
    assert _stored(folder)[successor].alg == "RS256" and _stored(folder)[successor].state == "active"
    with kapp.app_context():
        assert keystore.keyring().signing_key("RS256").kid == successor


def test_revoke_a_next_or_retired_key_needs_no_replacement(kapp, folder):
    spare = _generated_kid(_ok(kapp, "generate"))
    active = _kid(folder, "ES256", "active")
    assert f"revoke\t{spare}" in _ok(kapp, "revoke", spare)
    newer = _generated_kid(_ok(kapp, "generate"))
    _ok(kapp, "activate", newer, "--force")
    assert f"revoke\t{active}" in _ok(kapp, "revoke", active)
    assert {k.kid: k.state for k in keystore.read_all(folder) if k.alg == "ES256"} == {
        spare: "revoked", active: "revoked", newer: "active"}


# audit ------------------------------------------------------------------------------------------------------------

def test_every_change_and_refusal_is_an_audit_event(kapp, folder):
    kid = _generated_kid(_ok(kapp, "generate"))
    _refused(kapp, "activate", kid)
    _ok(kapp, "activate", kid, "--force")
    old = [k.kid for k in keystore.read_all(folder) if k.alg == "ES256" and k.state == "retired"][0]
    events = _key_events(kapp)
    assert {"outcome": "success", "kid": kid, "alg": "ES256", "state": "next", "action": "generate"} in events
    assert {"outcome": "success", "kid": kid, "alg": "ES256", "state": "active", "action": "activate"} in events
    assert {"outcome": "success", "kid": old, "alg": "ES256", "state": "retired", "action": "retire"} in events
    [refusal] = [e for e in events if e["outcome"] == "refused"]
    assert refusal["kid"] == kid and refusal["action"] == "activate" and "wait" in refusal["reason"]
    assert sum(e["action"] == "ensure" for e in events) == 2


def test_list_shows_states_times_and_what_comes_next(kapp, folder):
    kid = _generated_kid(_ok(kapp, "generate"))
    listed = _ok(kapp, "list")
    assert "ES256\tactive" in listed and "RS256\tactive" in listed
    [line] = [line for line in listed.splitlines() if line.startswith(kid)]
    assert "\tnext\t" in line and "may activate from" in line and "created 20" in line


# workers --------------------------------------------------------------------------------------------------------

def test_a_worker_seeing_two_active_keys_signs_with_the_newest_and_a_change_repairs_it(folder):
    keys = keystore.Keys(folder, reload_interval=0, jwks_max_age=0, activation_margin=0, token_lifetime=60,
                         clock_skew=0, rotation_period=0)
    keys.ensure()
    older = [k for k in keys.all() if k.alg == "ES256"][0]
    newer = keystore.generate("ES256", state="active")  # as an activation interrupted after its first write
    newer.activated_at = older.activated_at + 1
    keystore.write(folder, newer)
    ring = keystore.KeyRing(folder, 0)
    assert ring.signing_key("ES256").kid == newer.kid
    assert {k.kid for k in ring.verification_keys()} >= {older.kid, newer.kid}
    claims = {"iss": "x", "exp": int(time.time()) + 60}
    token = jwt.encode({"alg": "ES256", "kid": newer.kid}, claims, ring.signing_key("ES256"))
    assert jwt.decode(token, ring.verification_keys()).claims == claims
    changes = keys.rotate(["ES256"], period=10**9)
    assert [(c.key.kid, c.action) for c in changes][0] == (older.kid, "retire")
    assert [k.kid for k in keys.all() if k.alg == "ES256" and k.state == "active"] == [newer.kid]


def test_a_worker_notices_a_change_within_the_reload_interval(folder):
    keys = keystore.Keys(folder, reload_interval=1, jwks_max_age=0, activation_margin=0, token_lifetime=60,
                         clock_skew=0, rotation_period=0)
    keys.ensure()
    ring = keystore.KeyRing(folder, 1)
    old = ring.signing_key("ES256").kid
    [change] = [c for c in keys.generate("ES256") if c.state == "next"]
    keys.activate(change.key.kid, force=True)
    assert ring.signing_key("ES256").kid == old, "checked at most once per interval"
    time.sleep(1.05)
    assert ring.signing_key("ES256").kid == change.key.kid


def _activate_in_a_process(folder, kid, barrier):
    keys = keystore.Keys(folder, reload_interval=0, jwks_max_age=0, activation_margin=0, token_lifetime=60,
                         clock_skew=0, rotation_period=0)
    barrier.wait(30)
    keys.activate(kid, force=True)


def test_concurrent_activations_leave_exactly_one_active_key_per_algorithm(folder):
    keys = keystore.Keys(folder, reload_interval=0, jwks_max_age=0, activation_margin=0, token_lifetime=60,
                         clock_skew=0, rotation_period=0)
    keys.ensure()
    candidates = [c.key for alg in ("ES256",) * 14 + ("RS256",) * 10 for c in keys.generate(alg)]
    published = {k.kid for k in keys.all()}
    context = multiprocessing.get_context("fork")
    barrier = context.Barrier(len(candidates))
    workers = [context.Process(target=_activate_in_a_process, args=(folder, k.kid, barrier)) for k in candidates]
    for process in workers:
        process.start()
    # meanwhile a worker keeps reading the folder: it always signs for both algorithms and loses no key
    ring, problems, done = keystore.KeyRing(folder, 0), [], threading.Event()

    def read():
        while not done.is_set():
            ring.refresh(force=True)
            try:
                ring.signing_key("ES256"), ring.signing_key("RS256")
            except keystore.KeyStoreError as exc:
                problems.append(str(exc))
            missing = published - {k.kid for k in ring.verification_keys()}
            if missing:
                problems.append(f"unpublished {missing}")

    reader = threading.Thread(target=read)
    reader.start()
    for process in workers:
        process.join(60)
    done.set()
    reader.join(10)
    assert [p.exitcode for p in workers] == [0] * len(workers)
    assert problems == []
    final = keys.all()
    assert {k.kid for k in final} == published, "no key lost"
    for alg in ("ES256", "RS256"):
        active = [k for k in final if k.alg == alg and k.state == "active"]
        assert len(active) == 1, f"{alg}: {[k.kid for k in active]}"
        others = [k for k in final if k.alg == alg and k.state != "active"]
        assert all(k.state == "retired" for k in others)
        assert active[0].activated_at == max(k.activated_at for k in final if k.alg == alg)
        assert active[0].kid in {k.kid for k in candidates}, "the last activation won"
