-- Which host holds each local volume disk (volume names qualified by org id), so instances that
-- mount it are placed next to it.
CREATE TABLE volume_placements (
    volume     TEXT PRIMARY KEY,
    host_id    UUID        NOT NULL,
    created_at TIMESTAMPTZ NOT NULL DEFAULT now()
);
