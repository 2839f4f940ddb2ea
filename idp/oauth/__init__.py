"""Authlib wiring (SPEC §4): grants, clients, tokens, scopes and claims, login policy, the endpoints' blueprint."""
