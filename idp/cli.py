"""Operators' command line (SPEC §5): ``flask --app wsgi idp clients|keys|demo …``.

The schema is managed with Flask-Migrate: ``flask --app wsgi db upgrade``.
"""
from __future__ import annotations

import csv
import json

import click
from flask import current_app
from flask.cli import AppGroup

from . import audit, keystore, signals
from .oauth import clients as client_registry

idp = AppGroup("idp", help="Selfcare IdP operations.")


def init_app(app) -> None:
    app.cli.add_command(idp)


def _split(values) -> list[str]:
    out = []
    for value in values:
        out.extend(v for v in value.replace(",", " ").split() if v)
    return out


# clients --------------------------------------------------------------------------------------------------------
@idp.group("clients", help="Register, list, show and disable relying parties.")
def clients_group():
    pass


@clients_group.command("create")
@click.option("--name", required=True, help="Name shown to people on the login page.")
@click.option("--redirect-uri", "redirect_uris", multiple=True, help="Exact redirect URI (repeatable).")
@click.option("--post-logout-uri", "post_logout_uris", multiple=True, help="Exact post-logout URI (repeatable).")
@click.option("--grant-type", "grant_types", multiple=True,
              help="authorization_code, refresh_token, client_credentials, "
                   "urn:selfcare:params:oauth:grant-type:network (repeatable).")
@click.option("--scope", default="openid", show_default=True, help="Scopes the client may request.")
@click.option("--auth-method", default="client_secret_basic", show_default=True,
              type=click.Choice(client_registry.AUTH_METHODS))
@click.option("--jwks", "jwks_file", type=click.File("r"), help="The client's public JWKS (private_key_jwt).")
@click.option("--id-token-alg", type=click.Choice(client_registry.SIGNING_ALGS), help="Default: the server's.")
@click.option("--first-party", is_flag=True, help="An application of the operator itself.")
@click.option("--may-introspect", is_flag=True, help="A resource server that may introspect every token.")
@click.option("--native-login", is_flag=True,
              help="A first-party app that logs people in without a browser (authorization challenge endpoint).")
@click.option("--client-id", help="Choose the client_id (default: random).")
@click.option("--secret", help="Choose the secret (default: random; shown once).")
def clients_create(name, redirect_uris, post_logout_uris, grant_types, scope, auth_method, jwks_file, id_token_alg,
                   first_party, may_introspect, native_login, client_id, secret):
    try:
        row, secret = client_registry.create(
            name, redirect_uris=_split(redirect_uris), post_logout_redirect_uris=_split(post_logout_uris),
            grant_types=_split(grant_types) or ["authorization_code", "refresh_token"], scope=scope,
            auth_method=auth_method, jwks=json.load(jwks_file) if jwks_file else None, id_token_alg=id_token_alg,
            first_party=first_party, may_introspect=may_introspect, native_login=native_login, client_id=client_id,
            secret=secret)
    except (client_registry.ClientError, json.JSONDecodeError) as exc:
        raise click.ClickException(str(exc)) from exc
    signals.emit(signals.CLIENT_CREATED, client_id=row.client_id, auth_method=auth_method,
                 first_party=first_party)
    click.echo(f"client_id:     {row.client_id}")
    if secret:
        click.echo(f"client_secret: {secret}   (shown once: only its hash is stored)")


@clients_group.command("list")
def clients_list():
    for row in client_registry.all_clients():
        state = "disabled" if row.disabled else "active"
        click.echo(f"{row.client_id}\t{state}\t{row.meta.get('token_endpoint_auth_method')}\t{row.name}")


@clients_group.command("show")
@click.argument("client_id")
def clients_show(client_id):
    row = client_registry.get(client_id)
    if row is None:
        raise click.ClickException(f"no client {client_id}")
    click.echo(json.dumps({"client_id": row.client_id, "name": row.name, "first_party": row.first_party,
                           "disabled": row.disabled, **row.meta}, indent=2))


@clients_group.command("disable")
@click.argument("client_id")
def clients_disable(client_id):
    try:
        client_registry.disable(client_id)
    except client_registry.ClientError as exc:
        raise click.ClickException(str(exc)) from exc
    signals.emit(signals.CLIENT_DISABLED, client_id=client_id)
    ttl = current_app.config["CLIENT_CACHE_TTL"]
    click.echo(f"disabled {client_id}; its tokens are revoked; running workers stop accepting it within {ttl} s")


@clients_group.command("exchange-policy")
@click.argument("client_id")
@click.option("--subject-token-type", "subject_token_types", multiple=True,
              help="access_token, id_token or jwt (or the RFC 8693 URN) it may present as subject (repeatable).")
@click.option("--issuer", "issuers", multiple=True,
              help="self (this IdP) or an issuer of IDP_EXCHANGE_TRUSTED_ISSUERS (repeatable).")
@click.option("--audience", "audiences", multiple=True,
              help="An audience or resource URI it may obtain tokens for (repeatable).")
@click.option("--scope", "scopes", multiple=True, help="Scopes it may obtain, at most (repeatable or spaced).")
@click.option("--actor-token-type", "actor_token_types", multiple=True,
              help="Actor token types it may present for delegation (repeatable; default: none).")
@click.option("--subject-client", "subject_clients", multiple=True,
              help="Another client whose access and ID tokens it may exchange (repeatable).")
@click.option("--refresh", is_flag=True, help="Issue refresh tokens with exchanged tokens (not when delegated).")
@click.option("--clear", is_flag=True, help="Remove the policy: the client may no longer exchange tokens.")
def clients_exchange_policy(client_id, subject_token_types, issuers, audiences, scopes, actor_token_types,
                            subject_clients, refresh, clear):
    """Set (replace) or clear CLIENT_ID's token-exchange policy (RFC 8693); without one it may not exchange."""
    from .oauth import exchange
    try:
        if clear:
            exchange.clear_policy(client_id)
            policy = None
        else:
            policy = exchange.set_policy(
                client_id, subject_token_types=_split(subject_token_types), issuers=_split(issuers),
                audiences=_split(audiences), scopes=_split(scopes), actor_token_types=_split(actor_token_types),
                subject_clients=_split(subject_clients), refresh=refresh)
    except exchange.PolicyError as exc:
        raise click.ClickException(str(exc)) from exc
    signals.emit(signals.EXCHANGE_POLICY_CHANGED, client_id=client_id, cleared=clear,
                 audiences=" ".join(policy["audiences"]) if policy else None)
    click.echo(json.dumps({"client_id": client_id, exchange.POLICY_KEY: policy}, indent=2))
    ttl = current_app.config["CLIENT_CACHE_TTL"]
    click.echo(f"running workers apply it within {ttl} s")


# keys -----------------------------------------------------------------------------------------------------------
@idp.group("keys", help="Signing keys: generate (next) → activate → retire → prune; rotate; revoke.")
def keys_group():
    pass


def _keys() -> keystore.Keys:
    return keystore.Keys.from_config(current_app.config)


def _when(epoch) -> str:
    from datetime import datetime, timezone
    if epoch is None:
        return "-"
    return datetime.fromtimestamp(epoch, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _key_change(action: str, operation, *args, kid: str | None = None, **kwargs) -> list[keystore.Change]:
    """Run one change of the key folder; each change, and each refusal, is an audit event."""
    try:
        changes = operation(*args, **kwargs)
    except keystore.Refused as exc:
        signals.emit(signals.KEY_CHANGED, "refused", kid=kid, action=action, reason=str(exc))
        raise click.ClickException(str(exc)) from exc
    except keystore.KeyStoreError as exc:
        raise click.ClickException(str(exc)) from exc
    for change in changes:
        key = change.key
        signals.emit(signals.KEY_CHANGED, kid=key.kid, alg=key.alg, state=change.state, action=change.action)
        click.echo(f"{change.action}\t{key.kid}\t{key.alg}\t{change.state}" + (f"\t{change.note}" if change.note
                                                                              else ""))
    return changes


def _bounds(changes: list[keystore.Change]) -> None:
    """What the operator may expect, and when (README "Signing keys")."""
    keys, config = _keys(), current_app.config
    reload_s, max_age = config["KEYS_RELOAD_INTERVAL"], config["JWKS_MAX_AGE"]
    for change in changes:
        key = change.key
        if change.state == "next":
            click.echo(f"  {key.kid} is in every worker's JWKS within {reload_s} s; activate it from "
                       f"{_when(keys.ready_at(key))} (`keys activate {key.kid}` or `keys rotate`)")
        elif change.state == "active":
            click.echo(f"  every worker signs {key.alg} with {key.kid} within {reload_s} s")
        elif change.state == "retired":
            click.echo(f"  {key.kid} stays in the JWKS to verify its tokens; `keys prune` removes it from "
                       f"{_when(keys.prunable_at(key))}")
        elif change.state == "revoked":
            click.echo(f"  {key.kid} leaves every worker's JWKS within {reload_s} s and its tokens are refused "
                       f"(userinfo, introspection, logout hints); relying parties drop it within a further "
                       f"{max_age} s")


# a thumbprint may begin with "-": take it as the KID, not as an unknown option
_KID_ARGUMENT = {"ignore_unknown_options": True}


@keys_group.command("list")
def keys_list():
    """Every key: kid, algorithm, state, created, activated, retired or revoked, and what comes next."""
    keys = _keys()
    for key in sorted(keys.all(), key=lambda k: (k.alg, keystore.STATES.index(k.state), k.created_at)):
        if key.state == "next":
            hint = f"may activate from {_when(keys.ready_at(key))}"
        elif key.state == "retired":
            hint = f"prunable from {_when(keys.prunable_at(key))}"
        else:
            hint = ""
        ended = key.revoked_at if key.state == "revoked" else key.retired_at
        click.echo(f"{key.kid}\t{key.alg}\t{key.state}\tcreated {_when(key.created_at)}\tactivated "
                   f"{_when(key.activated_at)}\t{'revoked' if key.state == 'revoked' else 'retired'} "
                   f"{_when(ended)}" + (f"\t{hint}" if hint else ""))


@keys_group.command("generate")
@click.option("--alg", type=click.Choice(keystore.ALGORITHMS), default="ES256", show_default=True)
@click.option("--activate", "activate_now", is_flag=True,
              help="Make it the active key at once (first set-up only: no key of this algorithm may be active).")
def keys_generate(alg, activate_now):
    """Create a key. It is published in the JWKS at once but signs only once activated."""
    _bounds(_key_change("generate", _keys().generate, alg, activate=activate_now))


@keys_group.command("activate", context_settings=_KID_ARGUMENT)
@click.argument("kid")
@click.option("--force", is_flag=True, help="Activate a key published too recently (relying parties that cached "
                                            "the JWKS refuse its tokens until they refetch it).")
def keys_activate(kid, force):
    """Make KID the key that signs for its algorithm; the previous active key is retired.

    Refused for a key published less than KEYS_RELOAD_INTERVAL + JWKS_MAX_AGE + KEYS_ACTIVATION_MARGIN seconds
    ago, unless --force.
    """
    changes = _key_change("activate", _keys().activate, kid, force=force, kid=kid)
    if not changes:
        click.echo(f"{kid} is already active")
    _bounds(changes)


@keys_group.command("retire", context_settings=_KID_ARGUMENT)
@click.argument("kid")
def keys_retire(kid):
    """Stop offering KID for signing but keep it in the JWKS (a next key that should never sign).

    The active key is retired by activating its successor.
    """
    changes = _key_change("retire", _keys().retire, kid, kid=kid)
    if not changes:
        click.echo(f"{kid} is already retired")
    _bounds(changes)


@keys_group.command("prune")
def keys_prune():
    """Remove retired keys whose every token has expired: from retired_at + KEYS_RELOAD_INTERVAL + the longest
    token lifetime (max of ACCESS_TOKEN_TTL, ID_TOKEN_TTL) + KEYS_CLOCK_SKEW. Never next, active or revoked keys.
    """
    if not _key_change("prune", _keys().prune):
        click.echo("nothing to prune")


@keys_group.command("rotate")
@click.option("--alg", type=click.Choice(keystore.ALGORITHMS),
              help="Only this algorithm (default: every algorithm with an active key).")
@click.option("--period", type=click.IntRange(min=0),
              help="Seconds the active key signs before its successor takes over (default KEYS_ROTATION_PERIOD).")
def keys_rotate(alg, period):
    """The safe sequence, idempotent: run it from cron (e.g. daily).

    Per algorithm: without a next key, generate one; with a next key published long enough (see `activate`)
    and an active key that has signed for the rotation period, activate it (retiring the old one). Then prune.
    """
    changes = _key_change("rotate", _keys().rotate, [alg] if alg else None, period=period)
    if not changes:
        click.echo("nothing to do")
    _bounds(changes)


@keys_group.command("revoke", context_settings=_KID_ARGUMENT)
@click.argument("kid")
@click.option("--replace", is_flag=True, help="KID is the active key: activate the newest next key of its "
                                              "algorithm (or a new key) first, in the same step.")
def keys_revoke(kid, replace):
    """Emergency: remove KID from the JWKS at once, destroy its private key, refuse its tokens.

    Refused for the only active key of an algorithm unless --replace.
    """
    changes = _key_change("revoke", _keys().revoke, kid, replace=replace, kid=kid)
    if not changes:
        click.echo(f"{kid} is already revoked")
    _bounds(changes)


@keys_group.command("ensure")
def keys_ensure():
    """Give every algorithm an active key if it has none (idempotent; used by set-up)."""
    try:
        changes = _keys().ensure()
    except keystore.KeyStoreError as exc:
        raise click.ClickException(str(exc)) from exc
    for change in changes:
        signals.emit(signals.KEY_CHANGED, kid=change.key.kid, alg=change.key.alg, state="active", action="ensure")
        click.echo(f"generated active {change.key.alg} key {change.key.kid}")


# demo -----------------------------------------------------------------------------------------------------------
@idp.command("demo")
@click.option("--rp-url", default="http://127.0.0.1:5001", show_default=True, help="Where the demo RP runs.")
@click.option("--rp-config", type=click.Path(dir_okay=False), help="Write the demo RP's client settings here.")
def demo(rp_url, rp_config):
    """Load demo directory data, a demo account and the demo RP's client (idempotent)."""
    from . import demo as demo_data
    info = demo_data.load(rp_url)
    if rp_config:
        with open(rp_config, "w", encoding="utf-8") as fh:
            json.dump(info["rp"], fh, indent=2)
    click.echo("Demo account:  line " + info["account"]["line"] + "   password " + info["account"]["password"]
               + "   security answer " + info["account"]["answer"])
    customer = info["customer"]
    click.echo(f"Demo customer: code {customer['code']}, company e-mail domain @{customer['email_domain']}")
    for free in info["free_lines"]:
        pin = f", SIM PIN {free['sim_pin']}" if free["sim_pin"] else ""
        click.echo(f"Free line:     {free['line']} ({free['sim_type']}{pin}) — for registration or Associa SIM")
    click.echo("Codes sent by SMS and e-mail: `flask --app wsgi idp outbox` or http://127.0.0.1:5000/dev/outbox")
    click.echo("Demo RP client: " + info["rp"]["client_id"])


# lockout --------------------------------------------------------------------------------------------------------
@idp.group("lockout", help="Temporary locks after too many wrong passwords or answers.")
def lockout_group():
    pass


@lockout_group.command("status")
@click.argument("line")
def lockout_status(line):
    from . import lockout, msisdn
    number = msisdn.try_normalise(line) or line
    click.echo(f"{msisdn.mask(number)}: {lockout.attempts(number)} attempts counted in the current window")


@lockout_group.command("clear")
@click.argument("line")
def lockout_clear(line):
    """Unlock a line before its lock expires (after checking who is asking)."""
    from . import lockout, msisdn
    number = msisdn.try_normalise(line) or line
    lockout.clear(number)
    click.echo(f"{msisdn.mask(number)}: unlocked")


# audit ----------------------------------------------------------------------------------------------------------
@idp.group("audit", help="Read the audit log.")
def audit_group():
    pass


@audit_group.command("tail")
@click.option("-n", "count", default=20, show_default=True, help="How many of the latest events.")
@click.option("--follow", is_flag=True, help="Keep printing new events (Ctrl-C to stop).")
def audit_tail(count, follow):
    import time as _time
    from datetime import datetime, timezone
    from .extensions import db
    last_id = 0
    for row in audit.latest(count):
        click.echo(_audit_line(row))
        last_id = row.id
    while follow:
        _time.sleep(1)
        db.session.rollback()  # see rows committed by other processes
        for row in audit.since(datetime.fromtimestamp(0, timezone.utc), after_id=last_id):
            click.echo(_audit_line(row))
            last_id = row.id


def _audit_line(row) -> str:
    who = row.masked_line or (f"account {row.account_id}" if row.account_id else "-")
    return (f"{row.occurred_at.isoformat(timespec='seconds')}  {row.type:<24} {row.outcome:<8} {who:<18} "
            f"{row.client_id or '-':<20} {row.client_address or '-':<15} {row.correlation_id}")


@audit_group.command("export")
@click.option("--since", "since_text", required=True, help="ISO date or date-time, e.g. 2026-11-01 or 2026-11-01T08:00Z.")
@click.option("--format", "fmt", type=click.Choice(["jsonl", "csv"]), default="jsonl", show_default=True)
@click.option("--output", type=click.File("w", encoding="utf-8"), default="-", help="File to write (default: stdout).")
def audit_export(since_text, fmt, output):
    from datetime import datetime, timezone
    try:
        moment = datetime.fromisoformat(since_text.replace("Z", "+00:00"))
    except ValueError as exc:
        raise click.ClickException(f"--since is not an ISO date: {since_text}") from exc
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    count = audit.export(audit.since(moment), fmt, output)
    click.echo(f"{count} events", err=True)


# directory ------------------------------------------------------------------------------------------------------
@idp.group("directory", help="The customer and line directory (SPEC §2): import a file, show a line.")
def directory_group():
    pass


@directory_group.command("import")
@click.argument("path", type=click.Path(exists=True, dir_okay=False))
def directory_import(path):
    """Import customers and lines from a CSV or JSON file (by extension), all or nothing.

    Rows are counted from the first data row (CSV) or the first object (JSON). Re-importing updates customers by
    code and lines by number; a data SIM's PIN is stored hashed, and kept when a later file leaves it empty.
    """
    from . import directory
    with open(path, encoding="utf-8-sig") as fh:
        text = fh.read()
    try:
        rows = directory.parse_file(path, text)
    except (ValueError, csv.Error) as exc:  # json.JSONDecodeError is a ValueError
        raise click.ClickException(f"cannot read {path}: {exc}") from exc
    report = directory.import_rows(rows)
    if report.errors:
        for error in report.errors:
            click.echo(error, err=True)
        raise click.ClickException(f"{len(report.errors)} error(s) in {path}: nothing was imported")
    click.echo(f"customers: {report.customers_created} created, {report.customers_updated} updated")
    click.echo(f"lines:     {report.lines_created} created, {report.lines_updated} updated")


@directory_group.command("show")
@click.argument("line")
def directory_show(line):
    """Show a line as the directory knows it (any common form of the number: 333 123 4567, +39…, 0039…)."""
    from sqlalchemy import select

    from . import msisdn
    from .directory import directory
    from .extensions import db
    from .models import Account, AccountLine, Line

    number = msisdn.try_normalise(line)
    if number is None:
        raise click.ClickException(f"{line!r} is not a mobile line number")
    info = directory().line(number)
    if info is None:
        raise click.ClickException(f"{number} is not in the directory")
    row = db.session.scalar(select(Line).where(Line.msisdn == number))
    link = db.session.scalar(select(AccountLine).where(AccountLine.line_id == row.id))
    account = db.session.get(Account, link.account_id) if link is not None else None
    click.echo(f"line:      {info.msisdn}")
    click.echo(f"customer:  {info.customer.code} — {info.customer.name}")
    click.echo(f"sim type:  {info.sim_type}")
    click.echo(f"status:    {info.status}")
    if info.sim_type == "data":
        click.echo(f"sim pin:   {'set (stored hashed)' if row.sim_pin_hash else 'not set'}")
    if account is None:
        click.echo("account:   none (free for registration or Associa SIM)")
    else:
        registered = "registered line" if account.username == number else "associated SIM"
        click.echo(f"account:   {msisdn.mask(account.username)} ({account.role}, {account.status}; "
                   f"{registered}, slot {link.slot})")


# outbox ---------------------------------------------------------------------------------------------------------
@idp.command("outbox")
@click.option("-n", "--last", "count", default=10, show_default=True, type=click.IntRange(1, 1000),
              help="How many of the newest messages to print.")
def outbox(count):
    """Print the development outbox: the SMS and e-mails the outbox sender "sent", oldest first."""
    import time

    from . import senders
    messages = senders.read_outbox(limit=count)[::-1]
    if not messages:
        click.echo(f"the outbox is empty ({senders.outbox_path()})")
        return
    for message in messages:
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(message.get("sent_at", 0)))
        subject = f"  «{message['subject']}»" if message.get("subject") else ""
        click.echo(f"--- {when}  {message['channel']}  to {message['to']}{subject}")
        click.echo(message["text"])
