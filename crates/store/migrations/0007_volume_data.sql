-- Volume snapshots (disk copies on the volume's host) and backups (uploaded by that host's
-- agent to the backup target). Operational tables, like volume_placements: untouched by
-- rebuild-views.
CREATE TABLE volume_snapshots (
    id         TEXT PRIMARY KEY,
    org_id     UUID        NOT NULL,
    volume_id  UUID        NOT NULL,
    host_id    UUID        NOT NULL,
    size_bytes BIGINT      NOT NULL,
    created_at TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX volume_snapshots_volume ON volume_snapshots (volume_id);

CREATE TABLE volume_backups (
    id           TEXT PRIMARY KEY,
    org_id       UUID        NOT NULL,
    volume_id    UUID        NOT NULL,
    snapshot_id  TEXT        NOT NULL,
    host_id      UUID        NOT NULL,
    -- running → succeeded | failed
    state        TEXT        NOT NULL,
    bytes_done   BIGINT      NOT NULL DEFAULT 0,
    bytes_total  BIGINT      NOT NULL DEFAULT 0,
    size_bytes   BIGINT,
    image_sha256 TEXT,
    error        TEXT,
    created_at   TIMESTAMPTZ NOT NULL DEFAULT now(),
    finished_at  TIMESTAMPTZ
);
CREATE INDEX volume_backups_volume ON volume_backups (volume_id);
