"""Example programs that use the Selfcare IdP (not part of the installed package)."""
