-- Orchestration: what each environment should run (views of deploy/scale/stop events), and the
-- operational state the reconcilers and host agents own (instances, deployments, heartbeats).

ALTER TABLE v_envs
    ADD COLUMN release_id    UUID,
    ADD COLUMN deployment_id UUID,
    ADD COLUMN deploy_opts   JSONB   NOT NULL DEFAULT '{}'::jsonb,
    ADD COLUMN scales        JSONB   NOT NULL DEFAULT '{}'::jsonb,
    ADD COLUMN stopped       BOOLEAN NOT NULL DEFAULT false;

ALTER TABLE v_hosts ADD COLUMN draining BOOLEAN NOT NULL DEFAULT false;

-- ---------------------------------------------------------------------------------------------
-- Operational state: not projected from events (rebuild-views leaves it alone). Written by the
-- reconcilers (desired side) and by host agent reports (actual side).
-- ---------------------------------------------------------------------------------------------

-- One rollout of an environment to (release, secrets version).
CREATE TABLE deployments (
    id              UUID PRIMARY KEY,
    seq             BIGSERIAL,
    org_id          UUID        NOT NULL,
    env_id          UUID        NOT NULL,
    release_id      UUID        NOT NULL,
    secrets_version BIGINT      NOT NULL,
    cause           TEXT        NOT NULL,
    state           TEXT        NOT NULL,
    reason          TEXT        NOT NULL DEFAULT '',
    max_surge       INT         NOT NULL DEFAULT 1,
    release_cmd_done BOOLEAN    NOT NULL DEFAULT false,
    failures        INT         NOT NULL DEFAULT 0,
    deadline_at     TIMESTAMPTZ NOT NULL,
    created_at      TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at      TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX deployments_env ON deployments (env_id, seq);

-- Instances: the unit a host agent runs. Immutable config; a change means a new instance.
CREATE TABLE instances (
    id              TEXT PRIMARY KEY,
    seq             BIGSERIAL,
    org_id          UUID        NOT NULL,
    env_id          UUID        NOT NULL,
    deployment_id   UUID        NOT NULL,
    process_type    TEXT        NOT NULL,
    kind            TEXT        NOT NULL,
    release_id      UUID        NOT NULL,
    secrets_version BIGINT      NOT NULL,
    host_id         UUID        NOT NULL,
    memory_mb       BIGINT      NOT NULL,
    cpu_millis      BIGINT      NOT NULL,
    -- The agent spec without secret values (they are added from the secrets version when served).
    spec            JSONB       NOT NULL,
    secrets_as_env  BOOLEAN     NOT NULL,
    desired         TEXT        NOT NULL,
    -- While desired = 'stop' and now() < stop_at the agent keeps it running (the edge drops it first).
    stop_at         TIMESTAMPTZ,
    state           TEXT        NOT NULL DEFAULT 'pending',
    reason          TEXT        NOT NULL DEFAULT '',
    ready           BOOLEAN     NOT NULL DEFAULT false,
    address         TEXT,
    exit_code       INT,
    signal          INT,
    health_error    TEXT,
    last_logs       JSONB       NOT NULL DEFAULT '[]'::jsonb,
    crashes         INT         NOT NULL DEFAULT 0,
    created_at      TIMESTAMPTZ NOT NULL DEFAULT now(),
    reported_at     TIMESTAMPTZ
);
CREATE INDEX instances_env ON instances (env_id);
CREATE INDEX instances_host ON instances (host_id);

-- Heartbeats of host agents.
CREATE TABLE host_status (
    host_id   UUID PRIMARY KEY,
    last_seen TIMESTAMPTZ NOT NULL
);

-- Monotonic generations of the desired-state feeds (per host, and the edge's routing table):
-- bumped only when the content hash changes.
CREATE TABLE feeds (
    name       TEXT PRIMARY KEY,
    hash       TEXT   NOT NULL,
    generation BIGINT NOT NULL
);

-- Latest status of each reconciler run, per key (JSON, shown by status endpoints).
CREATE TABLE reconciler_status (
    reconciler TEXT        NOT NULL,
    key        TEXT        NOT NULL,
    status     JSONB       NOT NULL,
    at         TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (reconciler, key)
);
