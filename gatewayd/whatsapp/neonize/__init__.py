"""The neonize (whatsmeow) adapter: real WhatsApp behind the port of ``gatewayd.whatsapp.port``.

Import the submodules directly (``gatewayd.whatsapp.neonize.backend`` and so on): importing this
package loads nothing from neonize itself, so sim mode never pays for the Go library.
"""
