-- Event log: the source of truth. Append-only; never updated or deleted.
CREATE TABLE events (
    seq            BIGSERIAL PRIMARY KEY,
    stream         TEXT        NOT NULL,
    stream_version BIGINT      NOT NULL CHECK (stream_version > 0),
    event_type     TEXT        NOT NULL,
    schema_version INT         NOT NULL,
    payload        JSONB       NOT NULL,
    actor          TEXT        NOT NULL,
    org_id         UUID,
    occurred_at    TIMESTAMPTZ NOT NULL DEFAULT now(),
    UNIQUE (stream, stream_version)
);
CREATE INDEX events_org_seq ON events (org_id, seq);

-- Encrypted secret material (AEAD ciphertext), immutable, referenced by events by id.
-- Not a view: it is source data like the events, and is never rebuilt.
CREATE TABLE secret_material (
    id          UUID PRIMARY KEY,
    org_id      UUID  NOT NULL,
    nonce       BYTEA NOT NULL,
    ciphertext  BYTEA NOT NULL,
    created_at  TIMESTAMPTZ NOT NULL DEFAULT now()
);

-- Idempotency records: first result of a command, replayed on retry.
CREATE TABLE idempotency (
    org_id       UUID   NOT NULL,
    key          TEXT   NOT NULL,
    fingerprint  TEXT   NOT NULL,
    status       INT    NOT NULL,
    response     JSONB  NOT NULL,
    created_at   TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (org_id, key)
);

-- ---------------------------------------------------------------------------------------------
-- Views (projections of events). Dropped and replayed by `scaleboxd control rebuild-views`.
-- ---------------------------------------------------------------------------------------------
CREATE TABLE v_orgs (
    id         UUID PRIMARY KEY,
    name       TEXT NOT NULL UNIQUE,
    operator   BOOLEAN NOT NULL,
    version    BIGINT NOT NULL,
    created_at TIMESTAMPTZ NOT NULL
);

CREATE TABLE v_tokens (
    id         UUID PRIMARY KEY,
    org_id     UUID NOT NULL,
    name       TEXT NOT NULL,
    role       TEXT NOT NULL,
    hash       TEXT NOT NULL UNIQUE,
    prefix     TEXT NOT NULL,
    host_id    UUID,
    version    BIGINT NOT NULL,
    created_at TIMESTAMPTZ NOT NULL
);
CREATE INDEX v_tokens_org ON v_tokens (org_id);

CREATE TABLE v_projects (
    id         UUID PRIMARY KEY,
    org_id     UUID NOT NULL,
    name       TEXT NOT NULL,
    version    BIGINT NOT NULL,
    created_at TIMESTAMPTZ NOT NULL,
    UNIQUE (org_id, name)
);

CREATE TABLE v_apps (
    id            UUID PRIMARY KEY,
    org_id        UUID NOT NULL,
    name          TEXT NOT NULL,
    project_id    UUID,
    description   TEXT NOT NULL,
    release_count BIGINT NOT NULL,
    version       BIGINT NOT NULL,
    created_at    TIMESTAMPTZ NOT NULL,
    UNIQUE (org_id, name)
);

CREATE TABLE v_envs (
    id              UUID PRIMARY KEY,
    org_id          UUID NOT NULL,
    app_id          UUID NOT NULL,
    name            TEXT NOT NULL,
    secrets_version BIGINT NOT NULL,
    version         BIGINT NOT NULL,
    created_at      TIMESTAMPTZ NOT NULL,
    UNIQUE (app_id, name)
);

CREATE TABLE v_releases (
    id            UUID PRIMARY KEY,
    org_id        UUID NOT NULL,
    app_id        UUID NOT NULL,
    number        BIGINT NOT NULL,
    image_ref     TEXT NOT NULL,
    image_digest  TEXT NOT NULL,
    manifest_hash TEXT NOT NULL,
    manifest      JSONB NOT NULL,
    created_at    TIMESTAMPTZ NOT NULL,
    UNIQUE (app_id, number)
);

CREATE TABLE v_process_types (
    release_id UUID NOT NULL,
    org_id     UUID NOT NULL,
    name       TEXT NOT NULL,
    spec       JSONB NOT NULL,
    PRIMARY KEY (release_id, name)
);

CREATE TABLE v_routes (
    id                UUID PRIMARY KEY,
    org_id            UUID NOT NULL,
    app_id            UUID NOT NULL,
    env_id            UUID NOT NULL,
    kind              TEXT NOT NULL,
    hostname          TEXT,
    address           TEXT,
    listener_port     INT NOT NULL,
    process_type      TEXT NOT NULL,
    backend_port      INT NOT NULL,
    proxy_protocol_v2 BOOLEAN NOT NULL,
    ipv4_required     BOOLEAN NOT NULL,
    version           BIGINT NOT NULL,
    created_at        TIMESTAMPTZ NOT NULL
);
-- A hostname maps to at most one environment across all orgs.
CREATE UNIQUE INDEX v_routes_hostname_port ON v_routes (hostname, listener_port) WHERE hostname IS NOT NULL;
CREATE UNIQUE INDEX v_routes_tcp_port ON v_routes (listener_port) WHERE kind = 'tcp' AND hostname IS NULL;
CREATE INDEX v_routes_org ON v_routes (org_id);

CREATE TABLE v_hostname_owners (
    hostname TEXT PRIMARY KEY,
    env_id   UUID NOT NULL,
    routes   INT NOT NULL
);

CREATE TABLE v_secret_versions (
    env_id      UUID NOT NULL,
    org_id      UUID NOT NULL,
    version     BIGINT NOT NULL,
    names       JSONB NOT NULL,
    material_id UUID NOT NULL,
    actor       TEXT NOT NULL,
    created_at  TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (env_id, version)
);

CREATE TABLE v_volumes (
    id         UUID PRIMARY KEY,
    org_id     UUID NOT NULL,
    name       TEXT NOT NULL,
    size_gb    INT NOT NULL,
    app_id     UUID,
    env_id     UUID,
    host_id    UUID,
    version    BIGINT NOT NULL,
    created_at TIMESTAMPTZ NOT NULL,
    UNIQUE (org_id, name)
);

CREATE TABLE v_hosts (
    id          UUID PRIMARY KEY,
    name        TEXT NOT NULL UNIQUE,
    address     TEXT NOT NULL,
    cpus        INT NOT NULL,
    memory_mb   BIGINT NOT NULL,
    labels      JSONB NOT NULL,
    version     BIGINT NOT NULL,
    created_at  TIMESTAMPTZ NOT NULL
);
