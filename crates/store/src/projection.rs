//! Projections: how each event changes the views. Used both by live appends (same transaction)
//! and by rebuilds, so a rebuild gives the views the live path produced.

use tokio_postgres::Transaction;

use crate::{Event, EventEnvelope, StoreError};

/// Every view table, in an order safe for truncation and comparison.
pub const VIEW_TABLES: &[&str] = &[
    "v_orgs",
    "v_tokens",
    "v_projects",
    "v_apps",
    "v_envs",
    "v_releases",
    "v_process_types",
    "v_routes",
    "v_hostname_owners",
    "v_secret_versions",
    "v_volumes",
    "v_hosts",
    "v_cluster",
    "v_ipv4_cursor",
    "v_instance_addresses",
    "v_instance_address_cursors",
];

fn conflict(what: String) -> impl FnOnce(&str) -> String {
    move |_| what
}

/// Applies one event to the views.
pub async fn apply(tx: &Transaction<'_>, env: &EventEnvelope) -> Result<(), StoreError> {
    let at = env.occurred_at;
    let ver = env.stream_version;
    match &env.event {
        Event::OrgCreated(e) => {
            tx.execute(
                "INSERT INTO v_orgs (id, name, operator, version, created_at) VALUES ($1,$2,$3,$4,$5)",
                &[&e.org_id, &e.name, &e.operator, &ver, &at],
            )
            .await
            .map_err(|err| {
                StoreError::from(err).unique_as_conflict(conflict(format!("org {:?} already exists", e.name)))
            })?;
        }
        Event::OrgDeleted(e) => {
            tx.execute("DELETE FROM v_tokens WHERE org_id = $1", &[&e.id])
                .await?;
            tx.execute("DELETE FROM v_orgs WHERE id = $1", &[&e.id])
                .await?;
        }
        Event::TokenCreated(e) => {
            tx.execute(
                "INSERT INTO v_tokens (id, org_id, name, role, hash, prefix, host_id, version, created_at)
                 VALUES ($1,$2,$3,$4,$5,$6,$7,$8,$9)",
                &[&e.token_id, &e.org_id, &e.name, &e.role, &e.hash, &e.prefix, &e.host_id, &ver, &at],
            )
            .await?;
        }
        Event::TokenRevoked(e) => {
            tx.execute("DELETE FROM v_tokens WHERE id = $1", &[&e.id])
                .await?;
        }
        Event::ProjectCreated(e) => {
            tx.execute(
                "INSERT INTO v_projects (id, org_id, name, version, created_at) VALUES ($1,$2,$3,$4,$5)",
                &[&e.project_id, &e.org_id, &e.name, &ver, &at],
            )
            .await
            .map_err(|err| {
                StoreError::from(err)
                    .unique_as_conflict(conflict(format!("project {:?} already exists", e.name)))
            })?;
        }
        Event::ProjectDeleted(e) => {
            tx.execute("DELETE FROM v_projects WHERE id = $1", &[&e.id])
                .await?;
        }
        Event::AppCreated(e) => {
            tx.execute(
                "INSERT INTO v_apps (id, org_id, name, project_id, description, release_count, version, created_at)
                 VALUES ($1,$2,$3,$4,$5,0,$6,$7)",
                &[&e.app_id, &e.org_id, &e.name, &e.project_id, &e.description, &ver, &at],
            )
            .await
            .map_err(|err| {
                StoreError::from(err).unique_as_conflict(conflict(format!("app {:?} already exists", e.name)))
            })?;
        }
        Event::AppUpdated(e) => {
            tx.execute(
                "UPDATE v_apps SET project_id = $2, description = $3, version = $4 WHERE id = $1",
                &[&e.app_id, &e.project_id, &e.description, &ver],
            )
            .await?;
        }
        Event::AppDeleted(e) => {
            tx.execute("DELETE FROM v_process_types WHERE release_id IN (SELECT id FROM v_releases WHERE app_id = $1)", &[&e.id])
                .await?;
            tx.execute("DELETE FROM v_releases WHERE app_id = $1", &[&e.id])
                .await?;
            tx.execute("DELETE FROM v_apps WHERE id = $1", &[&e.id])
                .await?;
        }
        Event::EnvCreated(e) => {
            tx.execute(
                "INSERT INTO v_envs (id, org_id, app_id, name, secrets_version, version, created_at)
                 VALUES ($1,$2,$3,$4,0,$5,$6)",
                &[&e.env_id, &e.org_id, &e.app_id, &e.name, &ver, &at],
            )
            .await
            .map_err(|err| {
                StoreError::from(err)
                    .unique_as_conflict(conflict(format!("environment {:?} already exists", e.name)))
            })?;
        }
        Event::EnvDeleted(e) => {
            tx.execute("DELETE FROM v_secret_versions WHERE env_id = $1", &[&e.id])
                .await?;
            tx.execute("DELETE FROM v_envs WHERE id = $1", &[&e.id])
                .await?;
        }
        Event::ReleaseCreated(e) => {
            tx.execute(
                "INSERT INTO v_releases (id, org_id, app_id, number, image_ref, image_digest, manifest_hash, manifest, created_at)
                 VALUES ($1,$2,$3,$4,$5,$6,$7,$8,$9)",
                &[&e.release_id, &e.org_id, &e.app_id, &e.number, &e.image_ref, &e.image_digest, &e.manifest_hash, &e.manifest, &at],
            )
            .await
            .map_err(|err| {
                StoreError::from(err).unique_as_conflict(conflict(format!(
                    "release number {} already exists; retry",
                    e.number
                )))
            })?;
            tx.execute(
                "UPDATE v_apps SET release_count = greatest(release_count, $2) WHERE id = $1",
                &[&e.app_id, &e.number],
            )
            .await?;
            for pt in &e.process_types {
                tx.execute(
                    "INSERT INTO v_process_types (release_id, org_id, name, spec) VALUES ($1,$2,$3,$4)",
                    &[&e.release_id, &e.org_id, &pt.name, &pt.spec],
                )
                .await?;
            }
        }
        Event::RouteCreated(e) => {
            if let Some(h) = &e.hostname {
                let n = tx
                    .execute(
                        "INSERT INTO v_hostname_owners (hostname, env_id, routes) VALUES ($1, $2, 1)
                         ON CONFLICT (hostname) DO UPDATE SET routes = v_hostname_owners.routes + 1
                         WHERE v_hostname_owners.env_id = excluded.env_id",
                        &[h, &e.env_id],
                    )
                    .await?;
                if n == 0 {
                    return Err(StoreError::Conflict(format!(
                        "hostname {h:?} is already routed to another environment"
                    )));
                }
            }
            tx.execute(
                "INSERT INTO v_routes (id, org_id, app_id, env_id, kind, hostname, address, listener_port, process_type,
                                       backend_port, proxy_protocol_v2, ipv4_required, version, created_at)
                 VALUES ($1,$2,$3,$4,$5,$6,$7,$8,$9,$10,$11,$12,$13,$14)",
                &[
                    &e.route_id, &e.org_id, &e.app_id, &e.env_id, &e.kind, &e.hostname, &e.address, &e.listener_port,
                    &e.process_type, &e.backend_port, &e.proxy_protocol_v2, &e.ipv4_required, &ver, &at,
                ],
            )
            .await
            .map_err(|err| {
                StoreError::from(err).unique_as_conflict(conflict(format!(
                    "a route for {} port {} already exists",
                    e.hostname.as_deref().unwrap_or("this address"),
                    e.listener_port
                )))
            })?;
        }
        Event::RouteDeleted(e) => {
            let row = tx
                .query_opt(
                    "DELETE FROM v_routes WHERE id = $1 RETURNING hostname",
                    &[&e.id],
                )
                .await?;
            if let Some(Some(h)) = row.map(|r| r.get::<_, Option<String>>(0)) {
                tx.execute(
                    "UPDATE v_hostname_owners SET routes = routes - 1 WHERE hostname = $1",
                    &[&h],
                )
                .await?;
                tx.execute(
                    "DELETE FROM v_hostname_owners WHERE hostname = $1 AND routes <= 0",
                    &[&h],
                )
                .await?;
            }
        }
        Event::SecretsVersionCreated(e) => {
            let names = serde_json::to_value(&e.names).expect("strings serialize");
            tx.execute(
                "INSERT INTO v_secret_versions (env_id, org_id, version, names, material_id, actor, created_at)
                 VALUES ($1,$2,$3,$4,$5,$6,$7)",
                &[&e.env_id, &e.org_id, &e.version, &names, &e.material_id, &env.actor, &at],
            )
            .await
            .map_err(|err| {
                StoreError::from(err).unique_as_conflict(conflict(
                    "secrets were changed concurrently; retry".to_string(),
                ))
            })?;
            tx.execute(
                "UPDATE v_envs SET secrets_version = $2, version = $3 WHERE id = $1",
                &[&e.env_id, &e.version, &ver],
            )
            .await?;
        }
        Event::VolumeCreated(e) => {
            tx.execute(
                "INSERT INTO v_volumes (id, org_id, name, size_gb, app_id, env_id, host_id, version, created_at)
                 VALUES ($1,$2,$3,$4,$5,$6,$7,$8,$9)",
                &[&e.volume_id, &e.org_id, &e.name, &e.size_gb, &e.app_id, &e.env_id, &e.host_id, &ver, &at],
            )
            .await
            .map_err(|err| {
                StoreError::from(err).unique_as_conflict(conflict(format!("volume {:?} already exists", e.name)))
            })?;
        }
        Event::VolumeDeleted(e) => {
            tx.execute("DELETE FROM v_volumes WHERE id = $1", &[&e.id])
                .await?;
        }
        Event::HostRegistered(e) => {
            tx.execute(
                "INSERT INTO v_hosts (id, name, address, cpus, memory_mb, labels, version, created_at, ipv6_prefix)
                 VALUES ($1,$2,$3,$4,$5,$6,$7,$8,$9)",
                &[&e.host_id, &e.name, &e.address, &e.cpus, &e.memory_mb, &e.labels, &ver, &at, &e.ipv6_prefix],
            )
            .await
            .map_err(|err| {
                StoreError::from(err).unique_as_conflict(conflict(format!("host {:?} already exists", e.name)))
            })?;
        }
        Event::ClusterPrefixChosen(e) => {
            tx.execute(
                "INSERT INTO v_cluster (id, ula, version, created_at) VALUES (1, $1, $2, $3)",
                &[&e.prefix, &ver, &at],
            )
            .await?;
        }
        Event::EnvIpv4Allocated(e) => {
            tx.execute(
                "UPDATE v_envs SET ipv4 = $2, version = $3 WHERE id = $1",
                &[&e.env_id, &e.address, &ver],
            )
            .await
            .map_err(|err| {
                StoreError::from(err).unique_as_conflict(conflict(format!(
                    "IPv4 address {} is held by another environment",
                    e.address
                )))
            })?;
            // The pool's next-fit cursor: the address handed out last.
            tx.execute(
                "INSERT INTO v_ipv4_cursor (id, last_address) VALUES (1, $1)
                 ON CONFLICT (id) DO UPDATE SET last_address = excluded.last_address",
                &[&e.address],
            )
            .await?;
        }
        Event::EnvIpv4Released(e) => {
            tx.execute(
                "UPDATE v_envs SET ipv4 = NULL, version = $3 WHERE id = $1 AND ipv4 = $2",
                &[&e.env_id, &e.address, &ver],
            )
            .await?;
        }
        Event::InstanceAddressAllocated(e) => {
            tx.execute(
                "INSERT INTO v_instance_addresses (address, host_id, instance) VALUES ($1, $2, $3)",
                &[&e.address, &e.host_id, &e.instance],
            )
            .await
            .map_err(|err| {
                StoreError::from(err).unique_as_conflict(conflict(format!(
                    "address {} or instance {} already holds an allocation",
                    e.address, e.instance
                )))
            })?;
            tx.execute(
                "INSERT INTO v_instance_address_cursors (host_id, last_address) VALUES ($1, $2)
                 ON CONFLICT (host_id) DO UPDATE SET last_address = excluded.last_address",
                &[&e.host_id, &e.address],
            )
            .await?;
        }
        Event::InstanceAddressReleased(e) => {
            tx.execute(
                "DELETE FROM v_instance_addresses WHERE address = $1 AND instance = $2",
                &[&e.address, &e.instance],
            )
            .await?;
        }
        Event::EnvDeployed(e) => {
            let opts = serde_json::json!({
                "deadline_s": e.deadline_s,
                "max_surge": e.max_surge,
                "max_unavailable": e.max_unavailable,
            });
            tx.execute(
                "UPDATE v_envs SET release_id = $2, deployment_id = $3, deploy_opts = $4, version = $5 WHERE id = $1",
                &[&e.env_id, &e.release_id, &e.deployment_id, &opts, &ver],
            )
            .await?;
        }
        Event::EnvScaled(e) => {
            let scales = serde_json::to_value(&e.scales).expect("maps serialize");
            tx.execute(
                "UPDATE v_envs SET scales = scales || $2, version = $3 WHERE id = $1",
                &[&e.env_id, &scales, &ver],
            )
            .await?;
        }
        Event::EnvRunStateSet(e) => {
            tx.execute(
                "UPDATE v_envs SET stopped = $2, version = $3 WHERE id = $1",
                &[&e.env_id, &e.stopped, &ver],
            )
            .await?;
        }
        Event::HostDrainSet(e) => {
            tx.execute(
                "UPDATE v_hosts SET draining = $2, version = $3 WHERE id = $1",
                &[&e.host_id, &e.draining, &ver],
            )
            .await?;
        }
        Event::HostRemoved(e) => {
            tx.execute("DELETE FROM v_tokens WHERE host_id = $1", &[&e.id])
                .await?;
            tx.execute("DELETE FROM v_hosts WHERE id = $1", &[&e.id])
                .await?;
        }
    }
    Ok(())
}
