"""The daemon on the simulated network: the /_sim/ control API, /health and /metrics."""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families

from gatewayd.http.app import create_app
from gatewayd.nursery.commands import Outgoing
from gatewayd.store import agents as agents_store
from gatewayd.whatsapp.sim import SimulatedWhatsApp
from tests.gateway_fixtures import Running


async def start_agent(running: Running, agent_id: str) -> None:
    gateway = running.gateway
    await agents_store.create_agent(
        gateway.db, agent_id=agent_id, name=agent_id, user_id="u1", api_key="k"
    )
    with gateway.bus.subscribe(agent_id) as events:
        await gateway.agents.start(agent_id)
        async for event in events:
            if event.kind == "qr":
                break


async def test_sim_api_pairs_injects_and_lists_sends(running: Running) -> None:
    """Through /_sim/ a phone scans the QR, a customer writes, and sends are listed in order."""
    client, gateway = running.client, running.gateway
    await start_agent(running, "support-bot")
    qr = (await client.get("/_sim/agents/support-bot/qr")).json()["data"]
    assert qr["payload"].startswith("https://wa.me/settings/linked_devices#")
    with gateway.bus.subscribe("support-bot") as events:
        r = await client.post("/_sim/agents/support-bot/scan", json={"phone": "628123450001"})
        assert r.status_code == 200 and r.json()["data"]["phone"] == "628123450001"
        async for event in events:
            if event.kind == "status" and event.data["status"] == "connected":
                break
        r = await client.post(
            "/_sim/agents/support-bot/inject",
            json={"kind": "text", "from": "6281111111111", "text": "halo"},
        )
        assert r.status_code == 200
        injected = r.json()["data"]
        async for event in events:
            if event.kind == "handled":
                break
    assert event.data["id"] == injected["id"]
    await gateway.agents.send(
        "support-bot", Outgoing(to="6281111111111@s.whatsapp.net", text="one")
    )
    await gateway.agents.send(
        "support-bot", Outgoing(to="6281111111111@s.whatsapp.net", text="two")
    )
    sent = (await client.get("/_sim/agents/support-bot/sent")).json()["data"]
    assert [s["text"] for s in sent if s["kind"] == "text"] == ["one", "two"]
    assert sent[0]["at"] <= sent[1]["at"]

    health = (await client.get("/health")).json()
    assert health["components"]["whatsapp"]["agents"] == {"connected": 1}

    r = await client.post("/_sim/agents/support-bot/drop")
    assert r.json()["data"]["event"] == "disconnected"
    r = await client.post("/_sim/agents/nobody/drop")
    assert r.status_code == 409 and r.json()["error"]["code"] == "SESSION_NOT_READY"
    r = await client.post("/_sim/agents/support-bot/scan", json={"phone": 5})
    assert r.status_code == 400 and r.json()["error"]["code"] == "INVALID_PAYLOAD"


async def test_metrics_report_agents_and_messages(running: Running) -> None:
    """/metrics has agents by status, sends and receives by agent, and the deployed service's names."""
    client, gateway = running.client, running.gateway
    await start_agent(running, "bot-m")
    with gateway.bus.subscribe("bot-m") as events:
        await client.post("/_sim/agents/bot-m/scan", json={"phone": "628123450009"})
        async for event in events:
            if event.kind == "status" and event.data["status"] == "connected":
                break
        await client.post("/_sim/agents/bot-m/inject", json={"from": "6281111111111", "text": "hi"})
        async for event in events:
            if event.kind == "handled":
                break
    await gateway.agents.send("bot-m", Outgoing(to="6281111111111@s.whatsapp.net", text="yo"))
    text = (await client.get("/metrics")).text
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for f in text_string_to_metric_families(text)
        for s in f.samples
    }
    assert samples[("gatewayd_agents", (("status", "connected"),))] == 1
    assert samples[("whatsapp_sessions_active", ())] == 1
    assert samples[("whatsapp_messages_sent_total", (("agentId", "bot-m"),))] == 1
    assert samples[("whatsapp_messages_received_total", (("agentId", "bot-m"),))] == 1
    assert samples[("gatewayd_messages_sent_total", (("agent", "bot-m"),))] == 1
    assert samples[("gatewayd_send_queue_depth", (("agent", "bot-m"),))] == 0
    assert any(
        name == "gatewayd_agent_restarts_total" or name.startswith("whatsapp_errors")
        for f in text_string_to_metric_families(text)
        for name in [f.name]
    )


async def test_sim_api_exists_only_in_sim_mode(running: Running) -> None:
    """The app built without the in-process simulated network has no /_sim/ routes."""

    gateway = running.gateway
    app = create_app(gateway.services, gateway)
    paths = {getattr(route, "path", "") for route in app.routes}
    assert not any(path.startswith("/_sim") for path in paths)
    assert isinstance(gateway.backend, SimulatedWhatsApp)
    assert "/_sim/agents/{agent_id}/scan" in {
        getattr(r, "path", "")
        for r in create_app(gateway.services, gateway, sim=gateway.backend).routes
    }
