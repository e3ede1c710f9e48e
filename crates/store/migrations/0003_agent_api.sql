-- Where the control plane reaches each host agent's local API (instance logs), as the agent
-- reports it. Operational state, like host_status itself.
ALTER TABLE host_status
    ADD COLUMN api_url   TEXT,
    ADD COLUMN api_token TEXT;
