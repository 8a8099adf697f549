-- Webhook deliveries not made yet, in the order their events opened and closed: written
-- in the transaction that opens or closes the event, removed once the webhook answered
-- 2xx (or after its last try), so a restart or a change of the coordinator that leads
-- loses none and sends them in order.
CREATE TABLE outbox (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    body TEXT NOT NULL,
    created INTEGER NOT NULL,
    tries INTEGER NOT NULL,
    next_try INTEGER NOT NULL,
    last_error TEXT
);

-- Whether an event's opening was sent to the webhook: its resolution is sent if and only
-- if it was (a site past its hourly allowance of calls sends neither).
ALTER TABLE events ADD COLUMN sent INTEGER NOT NULL DEFAULT 0;
-- Events open now had their opening sent the old way (when a webhook was set): their
-- resolution is sent too.
UPDATE events SET sent = 1 WHERE closed IS NULL;
