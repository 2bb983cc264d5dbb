"""The simulated WhatsApp network as its own process (``gatewayd simnet``) and the daemon's
client of it (``gatewayd run --whatsapp sim=URL``).

``server`` runs the network (``sessions`` drives remote pairs and runs with whatsmeow-like
acknowledgements, ``statefile`` keeps it across restarts, ``routes`` is the ``/_net/``
protocol); ``client`` is the ``WhatsAppBackend`` a daemon uses to reach it; ``wire`` holds the
JSON shapes both sides share.
"""
