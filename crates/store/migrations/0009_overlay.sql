-- The WireGuard overlay as each host's agent reports it (docs/overlay.md): the host's public key,
-- its underlay endpoint (`ip:port`) and the health of its peers (a JSON array of
-- `{host, reachable, last_handshake_secs, rx_bytes, tx_bytes}`). Operational state, like
-- host_status itself: written by `POST /v1/agent/report`, untouched by rebuild-views.
ALTER TABLE host_status
    ADD COLUMN overlay_public_key TEXT,
    ADD COLUMN overlay_endpoint   TEXT,
    ADD COLUMN overlay_peers      JSONB NOT NULL DEFAULT '[]'::jsonb;
