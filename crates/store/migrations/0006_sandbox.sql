-- VM sandboxes (the /vms and /templates surface). Operational state of the host's VM runtime,
-- like `instances`: not event-sourced views, untouched by rebuild-views.
CREATE TABLE sandbox_vms (
    id            TEXT PRIMARY KEY,
    org_id        UUID        NOT NULL,
    name          TEXT        NOT NULL UNIQUE,
    template      TEXT        NOT NULL,
    -- Address on the VM bridge (internal; the API shows the host's external address).
    ip            TEXT        NOT NULL UNIQUE,
    ssh_port      INTEGER     NOT NULL UNIQUE,
    tap           TEXT        NOT NULL UNIQUE,
    vcpu_count    INTEGER     NOT NULL,
    mem_size_mib  INTEGER     NOT NULL,
    disk_size_gib INTEGER     NOT NULL,
    -- creating → running; a row still `creating` after a restart is cleaned up.
    state         TEXT        NOT NULL,
    created_at    TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX sandbox_vms_org ON sandbox_vms (org_id);

-- Who owns each template made by a snapshot. Template files without a row were built on the
-- host (e.g. debian-base) and are shared by every org.
CREATE TABLE sandbox_templates (
    name       TEXT PRIMARY KEY,
    org_id     UUID        NOT NULL,
    source_vm  TEXT,
    created_at TIMESTAMPTZ NOT NULL DEFAULT now()
);
