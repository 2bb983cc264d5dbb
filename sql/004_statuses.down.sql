UPDATE agents SET status = 'auth_failed' WHERE status = 'logged_out';
UPDATE agents SET status = 'disconnected' WHERE status IN ('replaced', 'banned', 'outdated');
ALTER TABLE agents DROP CONSTRAINT agents_status_check;
ALTER TABLE agents ADD CONSTRAINT agents_status_check CHECK (
    status IN ('awaiting_qr', 'connected', 'disconnected', 'auth_failed', 'stopped')
);
