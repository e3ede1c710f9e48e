-- Rollouts may take this many ready instances of a process type out of service at once.
ALTER TABLE deployments ADD COLUMN max_unavailable INT NOT NULL DEFAULT 0;
