-- Instance IPv6 addresses as IPAM allocations (docs/overlay.md): each placed instance holds one
-- address of its host's /64 (`InstanceAddressAllocated`, stream `instance-address:<instance>`)
-- until its record is deleted (`InstanceAddressReleased`). A held address is never handed out
-- twice (primary key); each host's next-fit cursor is the address handed out last, so a released
-- address is not handed out again soon.
CREATE TABLE v_instance_addresses (
    address    TEXT PRIMARY KEY,
    host_id    UUID NOT NULL,
    instance   TEXT NOT NULL UNIQUE
);
CREATE TABLE v_instance_address_cursors (
    host_id      UUID PRIMARY KEY,
    last_address TEXT NOT NULL
);
-- The operational instance record carries its allocated address (sent to the agent in the spec).
ALTER TABLE instances ADD COLUMN ipv6_address TEXT;
