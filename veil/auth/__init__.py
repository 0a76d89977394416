"""Accounts, sign-in, sessions, API tokens and the limits around them."""
