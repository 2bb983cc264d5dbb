"""Outbound HTTP: the address guard, media fetching, the AI backend client.

Every call goes through the one shared ``httpx.AsyncClient`` the daemon owns; httpx's
exceptions are translated here into the project's tree (``gatewayd.errors``).
"""
