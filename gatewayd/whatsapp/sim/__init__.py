"""The simulated WhatsApp network: the stand-in the tests and ``--whatsapp sim`` run against.

``SimulatedWhatsApp`` is the backend; ``SimNetwork`` the shared world its clients live in.
"""

from gatewayd.whatsapp.sim.client import SimulatedClient
from gatewayd.whatsapp.sim.network import ActiveBan, SimNetwork
from gatewayd.whatsapp.sim.paircode import PairCodeRefused
from gatewayd.whatsapp.sim.whatsapp import NetworkState, NoQrShowing, SimulatedWhatsApp

__all__ = [
    "ActiveBan",
    "NetworkState",
    "NoQrShowing",
    "PairCodeRefused",
    "SimNetwork",
    "SimulatedClient",
    "SimulatedWhatsApp",
]
