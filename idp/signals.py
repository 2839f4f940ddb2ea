"""Security events (SPEC §5 "Every security-relevant event … is written to an audit log"; issue 4 point 4).

Code that does something security-relevant calls ``emit``; it never writes the audit log itself. ``audit`` is the
one receiver that does. Event names are the constants below; details must never carry a secret or a code.
"""
from __future__ import annotations

from blinker import Namespace

_signals = Namespace()
security_event = _signals.signal("security-event")

LOGIN_SUCCEEDED = "login.succeeded"
LOGIN_FAILED = "login.failed"
AUTOLOGIN_SPOOF = "autologin.spoof"
AUTOLOGIN_THROTTLED = "autologin.throttled"
LOGOUT = "logout"
ACCOUNT_LOCKED = "account.locked"
ACCOUNT_UNLOCKED = "account.unlocked"
PASSWORD_CHANGED = "password.changed"
PASSWORD_CHANGE_FAILED = "password.change_failed"
SESSION_ENDED = "session.ended"
GRANT_REVOKED = "grant.revoked"
REGISTRATION_STARTED = "registration.started"
REGISTRATION_COMPLETED = "registration.completed"
REGISTRATION_REFUSED = "registration.refused"
CODE_SENT = "code.sent"
CODE_SEND_FAILED = "code.send_failed"
CODE_WRONG = "code.wrong"
SIM_PIN_WRONG = "sim_pin.wrong"
RECOVERY_STARTED = "recovery.started"
RECOVERY_ANSWER_WRONG = "recovery.answer_wrong"
SIM_ASSOCIATED = "sim.associated"
SIM_REMOVED = "sim.removed"
CLIENT_CREATED = "client.created"
CLIENT_DISABLED = "client.disabled"
KEY_CHANGED = "key.changed"
TOKEN_REUSE_DETECTED = "token.reuse_detected"
# token exchange (RFC 8693; issue 6)
TOKEN_EXCHANGED = "token.exchanged"
TOKEN_EXCHANGE_REFUSED = "token.exchange_refused"
EXCHANGE_POLICY_CHANGED = "client.exchange_policy_changed"


def emit(event: str, outcome: str = "success", *, account_id: int | None = None, line: str | None = None,
         client_id: str | None = None, **details) -> None:
    """Announce a security event. ``line`` is given in E.164 and masked by the receiver."""
    security_event.send(event, outcome=outcome, account_id=account_id, line=line, client_id=client_id,
                        details=details)
