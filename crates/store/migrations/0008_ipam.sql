-- IPAM (crates/overlay): the cluster's IPv6 ULA /48, chosen once, and each host's /64.
CREATE TABLE v_cluster (
    id         INT PRIMARY KEY,
    ula        TEXT        NOT NULL,
    version    BIGINT      NOT NULL,
    created_at TIMESTAMPTZ NOT NULL
);
ALTER TABLE v_hosts ADD COLUMN ipv6_prefix TEXT UNIQUE;
