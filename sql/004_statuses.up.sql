-- 004_statuses: statuses that say how a connection ended.
--   logged_out  the phone unlinked the device (its data is gone; pairing again is needed)
--   replaced    another client opened the same session; not restored at start, so two
--               daemons never take the session from each other in turns
--   banned      WhatsApp banned the account for a while; resumed after the ban's expiry
--   outdated    WhatsApp refuses this client version (upgrade gatewayd / neonize)
ALTER TABLE agents DROP CONSTRAINT agents_status_check;
ALTER TABLE agents ADD CONSTRAINT agents_status_check CHECK (
    status IN ('awaiting_qr', 'connected', 'disconnected', 'auth_failed', 'stopped',
               'logged_out', 'replaced', 'banned', 'outdated')
);
