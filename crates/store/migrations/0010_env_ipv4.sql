-- The dedicated-IPv4 add-on (docs/overlay.md): the public IPv4 an environment holds from the
-- operator's pool (`EnvIpv4Allocated` / `EnvIpv4Released`; one per env, never two envs), and the
-- pool's next-fit cursor, the address handed out last, so a released address is not handed out
-- again at once.
ALTER TABLE v_envs ADD COLUMN ipv4 TEXT UNIQUE;
CREATE TABLE v_ipv4_cursor (
    id           INT PRIMARY KEY CHECK (id = 1),
    last_address TEXT NOT NULL
);
