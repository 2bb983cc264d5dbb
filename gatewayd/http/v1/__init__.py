"""The /api/v1 dialect (docs/contract/api-v1.md): the multi-user product's routes.

Every handler here is thin: parse (``bodies``), call a use case with the authenticated user,
render in the ``{"success", "message", "data"}`` envelope (``common``). Errors are rendered by
``gatewayd.http.errors`` with the /api/v1 table.
"""
