"""Scopes, claims and assurance levels (SPEC §4 "Claims"; OIDC Core §5.4, RFC 8176 `amr`).

| scope      | claims                                                    |
|------------|-----------------------------------------------------------|
| openid     | sub                                                       |
| phone      | phone_number, phone_number_verified                      |
| email      | email, email_verified                                     |
| profile    | role, customer_code, customer_name                        |
| lines      | lines (the account's associated SIMs, E.164) — our own    |

``sub`` is the account's opaque public id, never the phone number. Assurance levels (``acr``) are ordered; a
session satisfies a request for its own level or any lower one.
"""
from __future__ import annotations

SCOPES = ("openid", "profile", "email", "phone", "lines")

ACR_NETWORK = "urn:selfcare:acr:network"
ACR_PASSWORD = "urn:selfcare:acr:password"
ACR_PASSWORD_QUESTION = "urn:selfcare:acr:password+question"
ACR_LEVELS = {ACR_NETWORK: 1, ACR_PASSWORD: 2, ACR_PASSWORD_QUESTION: 3}
AMR = {ACR_NETWORK: ["mno"], ACR_PASSWORD: ["pwd"], ACR_PASSWORD_QUESTION: ["pwd", "kba"]}


def account_claims(account, scopes: set[str]) -> dict:
    """The claims of ``scopes`` about a person: an ``Account`` or a ``people.Person`` (the same attributes)."""
    claims: dict = {"sub": account.public_id}
    if "phone" in scopes:
        claims["phone_number"] = account.username
        claims["phone_number_verified"] = True  # the line's possession was proven at registration
    if "email" in scopes and account.email:
        claims["email"] = account.email
        claims["email_verified"] = bool(account.email_verified)
    if "profile" in scopes:
        claims["role"] = account.role
        claims["customer_code"] = account.customer_code
        claims["customer_name"] = account.customer_name
    if "lines" in scopes:
        claims["lines"] = list(account.line_numbers)
    return claims
