//! One reconciliation pass over every environment, in one transaction under an advisory lock
//! (so several control plane processes never reconcile at once):
//!
//! 1. hosts without a recent heartbeat are lost: their instances are marked lost and replaced;
//! 2. a deploy (or a new secrets version) becomes a deployment; a deployment runs the release's
//!    release command once (in its own instance) before anything is replaced, and a failure
//!    leaves the previous deployment serving;
//! 3. each process type converges on its scale with [`rollout::plan_group`]: health-gated,
//!    never below the ready capacity it had, failing the deployment on repeated crashes or at
//!    its deadline (the previous deployment then takes over again);
//! 4. new instances are placed by the scheduler.
//!
//! Idempotent: a pass over a converged state changes nothing. Each environment's outcome is
//! written as JSON to `reconciler_status` (shown by the status endpoint).

use std::collections::{BTreeMap, HashMap};

use scalebox_manifest::Manifest;
use scalebox_scheduler as sched;
use serde_json::{Value, json};
use tokio_postgres::Transaction;
use uuid::Uuid;

use super::rollout::{self, Inst, StopReason};
use super::spec::{self, Identity, Role};
use crate::{ApiError, Control};

const LOCK: i64 = 0x5ca1_eb0c_0010;

/// What a pass did.
#[derive(Debug, Default)]
pub struct PassStatus {
    /// Something changed (instances, deployments): readers of feeds should look again.
    pub changed: bool,
}

/// Instance states after which an instance never becomes ready again.
pub const TERMINAL: &[&str] = &["exited", "failed", "lost"];

struct HostRow {
    id: Uuid,
    cpus: i32,
    memory_mb: i64,
    labels: BTreeMap<String, String>,
    draining: bool,
}

struct EnvRow {
    id: Uuid,
    org: Uuid,
    app: String,
    name: String,
    release_id: Uuid,
    deployment_id: Option<Uuid>,
    deadline_s: i64,
    max_surge: i32,
    max_unavailable: i32,
    scales: BTreeMap<String, u32>,
    stopped: bool,
    secrets_version: i64,
}

#[derive(Clone)]
struct Dep {
    id: Uuid,
    release_id: Uuid,
    secrets_version: i64,
    state: String,
    max_surge: i32,
    max_unavailable: i32,
    failures: i32,
    deadline_passed: bool,
}

struct Release {
    number: i64,
    image_ref: String,
    image_digest: String,
    manifest: Manifest,
}

/// Places new instances with the scheduler; knows every live instance's resources.
struct Placer {
    hosts: Vec<sched::Host>,
    placements: Vec<sched::Placement>,
    config: sched::Config,
    /// Every volume that has a disk on some host, live or not: such a volume is never made
    /// anew (empty) elsewhere; a lost host's volume waits for a restore.
    placed_volumes: std::collections::HashSet<String>,
}

impl Placer {
    /// A host for one more instance of `group` (whose current up-to-date members are
    /// `members`), or why there is none.
    fn place(
        &mut self,
        instance: &str,
        group: &sched::GroupKey,
        members: &[String],
        r: sched::Resources,
        volume: Option<sched::VolumeNeed>,
    ) -> Result<String, String> {
        let placements = self
            .placements
            .iter()
            .map(|p| {
                let mut p = p.clone();
                if !members.contains(&p.instance) {
                    // Counts for capacity, but is not a member of the group being grown.
                    p.group = sched::GroupKey {
                        env: format!("other:{}", p.instance),
                        process: p.group.process.clone(),
                    };
                }
                p
            })
            .collect::<Vec<_>>();
        let in_group = placements.iter().filter(|p| &p.group == group).count() as u32;
        let snap = sched::Snapshot {
            hosts: self.hosts.clone(),
            groups: vec![sched::Group {
                key: group.clone(),
                scale: in_group + 1,
                resources: r,
                volume: volume.clone(),
                required_labels: BTreeMap::new(),
            }],
            placements,
        };
        let plan = sched::plan(&snap, &self.config);
        match plan.place.iter().find(|p| &p.group == group) {
            Some(p) => {
                self.placements.push(sched::Placement {
                    instance: instance.to_owned(),
                    group: group.clone(),
                    host: p.host.clone(),
                    resources: r,
                    seq: i64::MAX as u64,
                });
                Ok(p.host.clone())
            }
            None => Err(plan
                .unplaced
                .first()
                .map(|u| u.reason.clone())
                .unwrap_or_else(|| "no healthy host can take it".into())),
        }
    }
}

/// Runs one pass. Returns without doing anything if another process holds the lock.
pub async fn pass(ctl: &Control) -> Result<PassStatus, ApiError> {
    let mut client = ctl.db.client().await?;
    let mut tx = client.transaction().await?;
    let locked: bool = tx
        .query_one("SELECT pg_try_advisory_xact_lock($1)", &[&LOCK])
        .await?
        .get(0);
    if !locked {
        return Ok(PassStatus::default());
    }
    let mut changed = false;
    let lost_after = ctl.config.host_lost_after_s as f64;
    let hosts: Vec<HostRow> = tx
        .query(
            "SELECT h.id, h.cpus, h.memory_mb, h.labels, h.draining
             FROM v_hosts h JOIN host_status s ON s.host_id = h.id
             WHERE s.last_seen > now() - make_interval(secs => $1)",
            &[&lost_after],
        )
        .await?
        .iter()
        .map(|r| HostRow {
            id: r.get(0),
            cpus: r.get(1),
            memory_mb: r.get(2),
            labels: serde_json::from_value(r.get(3)).unwrap_or_default(),
            draining: r.get(4),
        })
        .collect();
    let healthy: Vec<Uuid> = hosts.iter().map(|h| h.id).collect();
    let n = tx
        .execute(
            "UPDATE instances SET desired = 'stop', state = 'lost', ready = false, stop_at = now(),
                    reason = 'host lost: no heartbeat from its agent'
             WHERE desired = 'run' AND host_id <> ALL($1)",
            &[&healthy],
        )
        .await?;
    changed |= n > 0;
    // Nothing is left to report instances of lost hosts gone; the agent, if it comes back,
    // stops whatever it runs that is no longer desired.
    let gone = tx
        .query(
            "DELETE FROM instances WHERE desired = 'stop' AND host_id <> ALL($1)
             RETURNING id, org_id, host_id, ipv6_address",
            &[&healthy],
        )
        .await?;
    changed |= !gone.is_empty();
    crate::ops::instance_ipam::release(&tx, &gone).await?;
    changed |= tx
        .execute(
            "UPDATE instances SET desired = 'stop', stop_at = now(), reason = 'environment deleted'
             WHERE desired = 'run' AND env_id NOT IN (SELECT id FROM v_envs)",
            &[],
        )
        .await?
        > 0;

    let mut volumes: HashMap<Uuid, std::collections::BTreeSet<String>> = HashMap::new();
    let mut placed_volumes = std::collections::HashSet::new();
    for r in tx
        .query("SELECT volume, host_id FROM volume_placements", &[])
        .await?
    {
        placed_volumes.insert(r.get::<_, String>(0));
        volumes.entry(r.get(1)).or_default().insert(r.get(0));
    }
    let mut placer = Placer {
        hosts: hosts
            .iter()
            .map(|h| sched::Host {
                id: h.id.to_string(),
                memory_mb: h.memory_mb.max(0) as u64,
                cpus: h.cpus.max(0) as u32,
                labels: h.labels.clone(),
                volumes: volumes.remove(&h.id).unwrap_or_default(),
                state: if h.draining {
                    sched::HostState::Draining
                } else {
                    sched::HostState::Schedulable
                },
            })
            .collect(),
        placements: tx
            .query(
                "SELECT id, env_id, process_type, host_id, memory_mb, cpu_millis, seq FROM instances",
                &[],
            )
            .await?
            .iter()
            .map(|r| sched::Placement {
                instance: r.get(0),
                group: sched::GroupKey {
                    env: r.get::<_, Uuid>(1).to_string(),
                    process: r.get(2),
                },
                host: r.get::<_, Uuid>(3).to_string(),
                resources: sched::Resources {
                    memory_mb: r.get::<_, i64>(4).max(0) as u64,
                    cpu_millis: r.get::<_, i64>(5).max(0) as u64,
                },
                seq: r.get::<_, i64>(6).max(0) as u64,
            })
            .collect(),
        config: sched::Config::default(),
        placed_volumes,
    };
    let draining: Vec<Uuid> = hosts.iter().filter(|h| h.draining).map(|h| h.id).collect();

    let envs = tx
        .query(
            "SELECT e.id, e.org_id, a.name, e.name, e.release_id, e.deployment_id, e.deploy_opts,
                    e.scales, e.stopped, e.secrets_version
             FROM v_envs e JOIN v_apps a ON a.id = e.app_id WHERE e.release_id IS NOT NULL",
            &[],
        )
        .await?;
    for r in &envs {
        let opts: Value = r.get(6);
        let env = EnvRow {
            id: r.get(0),
            org: r.get(1),
            app: r.get(2),
            name: r.get(3),
            release_id: r.get(4),
            deployment_id: r.get(5),
            deadline_s: opts["deadline_s"].as_i64().unwrap_or(600),
            max_surge: opts["max_surge"].as_i64().unwrap_or(1) as i32,
            max_unavailable: opts["max_unavailable"].as_i64().unwrap_or(0) as i32,
            scales: serde_json::from_value(r.get(7)).unwrap_or_default(),
            stopped: r.get(8),
            secrets_version: r.get(9),
        };
        // One environment's failure must not stall the others: each runs in a savepoint.
        let sp = tx.savepoint("env").await?;
        match reconcile_env(ctl, &sp, &env, &mut placer, &draining).await {
            Ok(c) => {
                sp.commit().await?;
                changed |= c;
            }
            Err(e) => {
                tracing::error!(env = %env.id, app = %env.app, name = %env.name, error = %e.message,
                    "reconciling this environment failed; others go on; retrying next pass");
                sp.rollback().await?;
            }
        }
    }
    tx.commit().await?;
    Ok(PassStatus { changed })
}

/// The newest deployment of `env`.
async fn latest_deployment(tx: &Transaction<'_>, env: Uuid) -> Result<Option<Dep>, ApiError> {
    newest_deployment(tx, env, false).await
}

/// The newest deployment of `env` that succeeded (what serves).
async fn last_succeeded(tx: &Transaction<'_>, env: Uuid) -> Result<Option<Dep>, ApiError> {
    newest_deployment(tx, env, true).await
}

async fn newest_deployment(
    tx: &Transaction<'_>,
    env: Uuid,
    succeeded_only: bool,
) -> Result<Option<Dep>, ApiError> {
    Ok(tx
        .query_opt(
            "SELECT id, release_id, secrets_version, state, max_surge, failures, deadline_at < now(), max_unavailable
             FROM deployments WHERE env_id = $1 AND (NOT $2 OR state = 'succeeded')
             ORDER BY seq DESC LIMIT 1",
            &[&env, &succeeded_only],
        )
        .await?
        .map(|r| dep(&r)))
}

fn dep(r: &tokio_postgres::Row) -> Dep {
    Dep {
        id: r.get(0),
        release_id: r.get(1),
        secrets_version: r.get(2),
        state: r.get(3),
        max_surge: r.get(4),
        max_unavailable: r.get(7),
        failures: r.get(5),
        deadline_passed: r.get(6),
    }
}

async fn load_release(tx: &Transaction<'_>, id: Uuid) -> Result<Release, ApiError> {
    let r = tx
        .query_one(
            "SELECT number, image_ref, image_digest, manifest FROM v_releases WHERE id = $1",
            &[&id],
        )
        .await?;
    let manifest: Manifest = serde_json::from_value(r.get(3)).map_err(|e| {
        tracing::error!(release = %id, error = %e, "stored manifest does not parse");
        ApiError::internal()
    })?;
    Ok(Release {
        number: r.get(0),
        image_ref: r.get(1),
        image_digest: r.get(2),
        manifest,
    })
}

async fn set_deployment(
    tx: &Transaction<'_>,
    id: Uuid,
    state: &str,
    reason: &str,
) -> Result<(), ApiError> {
    tx.execute(
        "UPDATE deployments SET state = $2, reason = $3, updated_at = now() WHERE id = $1",
        &[&id, &state, &reason],
    )
    .await?;
    tracing::info!(deployment = %id, state, reason, "deployment");
    Ok(())
}

/// Creates the deployment for a new deploy or secrets version; true if it did.
async fn start_deployments(tx: &Transaction<'_>, env: &EnvRow) -> Result<bool, ApiError> {
    let latest = latest_deployment(tx, env.id).await?;
    // A deploy not yet turned into a deployment comes first; otherwise a secrets version newer
    // than the latest deployment's rolls the environment again.
    let pending_deploy = match env.deployment_id {
        Some(d) => tx
            .query_opt("SELECT 1 FROM deployments WHERE id = $1", &[&d])
            .await?
            .is_none()
            .then_some(d),
        None => None,
    };
    let (id, release, cause, deadline_s, (surge, unavailable)) = match (pending_deploy, &latest) {
        (Some(d), _) => (
            d,
            env.release_id,
            "deploy",
            env.deadline_s,
            (env.max_surge, env.max_unavailable),
        ),
        (None, Some(l)) if env.secrets_version > l.secrets_version => {
            // Restart what serves (or is being rolled out) with the new secrets.
            let release = if l.state == "failed" {
                last_succeeded(tx, env.id)
                    .await?
                    .map_or(l.release_id, |d| d.release_id)
            } else {
                l.release_id
            };
            (
                Uuid::new_v4(),
                release,
                "secrets",
                600,
                (l.max_surge, l.max_unavailable),
            )
        }
        _ => return Ok(false),
    };
    tx.execute(
        "UPDATE deployments SET state = 'superseded', reason = 'a newer deployment started', updated_at = now()
         WHERE env_id = $1 AND state IN ('pending', 'release_command', 'rolling')",
        &[&env.id],
    )
    .await?;
    tx.execute(
        "INSERT INTO deployments (id, org_id, env_id, release_id, secrets_version, cause, state, max_surge, deadline_at, max_unavailable)
         VALUES ($1, $2, $3, $4, $5, $6, 'pending', $7, now() + make_interval(secs => $8), $9)",
        &[&id, &env.org, &env.id, &release, &env.secrets_version, &cause, &surge, &(deadline_s as f64), &unavailable],
    )
    .await?;
    tracing::info!(env = %env.id, deployment = %id, cause, "deployment started");
    Ok(true)
}

/// A description of why an instance is not serving, for deployment reasons and `why`.
fn describe(r: &tokio_postgres::Row) -> String {
    let id: String = r.get("id");
    let state: String = r.get("state");
    let mut s = format!("instance {id} is {state}");
    let reason: String = r.get("reason");
    if !reason.is_empty() {
        s.push_str(&format!(" ({reason})"));
    }
    if let Some(c) = r.get::<_, Option<i32>>("exit_code") {
        s.push_str(&format!("; exit code {c}"));
    }
    if let Some(sig) = r.get::<_, Option<i32>>("signal") {
        s.push_str(&format!("; killed by signal {sig}"));
    }
    if let Some(h) = r.get::<_, Option<String>>("health_error") {
        s.push_str(&format!("; health check: {h}"));
    }
    let logs: Value = r.get("last_logs");
    if let Some(lines) = logs.as_array().filter(|l| !l.is_empty()) {
        let tail: Vec<&str> = lines.iter().filter_map(Value::as_str).collect();
        s.push_str(&format!("; last output:\n  {}", tail.join("\n  ")));
    }
    s
}

#[allow(clippy::too_many_arguments)]
async fn create_instance(
    tx: &Transaction<'_>,
    placer: &mut Placer,
    env: &EnvRow,
    dep: &Dep,
    rel: &Release,
    role: Role<'_>,
    members: &[String],
) -> Result<Result<String, String>, ApiError> {
    let volume_names: Vec<String> = match role {
        Role::Process(p) => rel
            .manifest
            .process(p)
            .map(|pt| {
                pt.volumes
                    .iter()
                    .map(|v| format!("{}-{}", env.org.simple(), v.name))
                    .collect()
            })
            .unwrap_or_default(),
        Role::ReleaseCommand => vec![],
    };
    let (process, kind, resources) = match role {
        Role::Process(p) => match rel.manifest.process(p) {
            Some(pt) => (p, "service", pt.resources),
            None => return Ok(Err(format!("process type {p:?} is not in the release"))),
        },
        Role::ReleaseCommand => match &rel.manifest.release {
            Some(r) => ("release", "release", r.resources),
            None => return Ok(Err("the release has no release command".into())),
        },
    };
    let id = format!("{process}-{}", &Uuid::new_v4().simple().to_string()[..10]);
    let r = sched::Resources::from_vcpus(resources.cpu, resources.memory_mb as u64);
    let group = sched::GroupKey {
        env: env.id.to_string(),
        process: process.to_owned(),
    };
    // Local volumes pin the instance to the host that holds them (created where first placed).
    let need = volume_names.first().map(|n| sched::VolumeNeed {
        name: n.clone(),
        create_if_absent: !placer.placed_volumes.contains(n),
    });
    let host = match placer.place(&id, &group, members, r, need) {
        Ok(h) => h,
        Err(why) => return Ok(Err(format!("cannot place a {process} instance: {why}"))),
    };
    let host: Uuid = host.parse().map_err(|_| ApiError::internal())?;
    let ident = Identity {
        app: &env.app,
        env: &env.name,
        release: rel.number,
        instance: &id,
    };
    let spec = spec::agent_spec(
        &rel.manifest,
        role,
        &rel.image_ref,
        &rel.image_digest,
        &ident,
        &BTreeMap::new(),
    )
    .ok_or_else(ApiError::internal)?;
    let mut spec = spec;
    // Volume names are per org; on a host they are kept apart by the org's id.
    if let Some(vs) = spec["volumes"].as_array_mut() {
        for v in vs {
            if let Some(n) = v["name"].as_str().map(str::to_owned) {
                // The disk is made with the volume's declared size (1 GiB when undeclared).
                let size: Option<i32> = tx
                    .query_opt(
                        "SELECT size_gb FROM v_volumes WHERE org_id = $1 AND name = $2",
                        &[&env.org, &n],
                    )
                    .await?
                    .map(|r| r.get(0));
                v["size_gb"] = Value::from(size.unwrap_or(1).max(1));
                v["name"] = Value::String(format!("{}-{n}", env.org.simple()));
            }
        }
    }
    for v in &volume_names {
        tx.execute(
            "INSERT INTO volume_placements (volume, host_id) VALUES ($1, $2) ON CONFLICT DO NOTHING",
            &[v, &host],
        )
        .await?;
        if let Some(h) = placer.hosts.iter_mut().find(|h| h.id == host.to_string()) {
            h.volumes.insert(v.clone());
        }
    }
    // The instance's IPv6 address: an IPAM allocation in its host's /64.
    let ipv6 = crate::ops::instance_ipam::allocate(tx, env.org, host, &id).await?;
    if let Some(a) = &ipv6 {
        spec["ipv6_address"] = Value::String(a.clone());
    }
    tx.execute(
        "INSERT INTO instances (id, org_id, env_id, deployment_id, process_type, kind, release_id,
                                secrets_version, host_id, memory_mb, cpu_millis, spec, secrets_as_env, desired,
                                ipv6_address)
         VALUES ($1,$2,$3,$4,$5,$6,$7,$8,$9,$10,$11,$12,$13,'run',$14)",
        &[
            &id,
            &env.org,
            &env.id,
            &dep.id,
            &process,
            &kind,
            &dep.release_id,
            &dep.secrets_version,
            &host,
            &(r.memory_mb as i64),
            &(r.cpu_millis as i64),
            &spec,
            &rel.manifest.secrets.as_env,
            &ipv6,
        ],
    )
    .await?;
    tracing::info!(instance = %id, host = %host, env = %env.id, ipv6 = ?ipv6, "instance placed");
    Ok(Ok(id))
}

async fn stop_instance(
    tx: &Transaction<'_>,
    id: &str,
    drain_s: f64,
    why: &str,
) -> Result<(), ApiError> {
    // A ready instance leaves the routing table first and keeps running for `drain_s`.
    tx.execute(
        "UPDATE instances SET desired = 'stop', reason = $2,
                stop_at = now() + make_interval(secs => CASE WHEN ready THEN $3::float8 ELSE 0 END)
         WHERE id = $1",
        &[&id, &why, &drain_s],
    )
    .await?;
    tracing::info!(instance = id, why, "instance stopping");
    Ok(())
}

async fn reconcile_env(
    ctl: &Control,
    tx: &Transaction<'_>,
    env: &EnvRow,
    placer: &mut Placer,
    draining: &[Uuid],
) -> Result<bool, ApiError> {
    let drain_s = ctl.config.drain_s as f64;
    let mut changed = start_deployments(tx, env).await?;
    let Some(mut latest) = latest_deployment(tx, env.id).await? else {
        return Ok(changed);
    };
    let mut notes: Vec<String> = Vec::new();

    // Release instances of deployments that are no longer running their release command stop.
    changed |= tx
        .execute(
            "UPDATE instances i SET desired = 'stop', stop_at = now()
             FROM deployments d
             WHERE i.deployment_id = d.id AND i.env_id = $1 AND i.kind = 'release'
               AND i.desired = 'run' AND d.state <> 'release_command'",
            &[&env.id],
        )
        .await?
        > 0;

    if latest.state == "pending" {
        let rel = load_release(tx, latest.release_id).await?;
        let done_before = tx
            .query_opt(
                "SELECT 1 FROM deployments WHERE env_id = $1 AND release_id = $2 AND release_cmd_done LIMIT 1",
                &[&env.id, &latest.release_id],
            )
            .await?
            .is_some();
        if rel.manifest.release.is_some() && !done_before {
            set_deployment(
                tx,
                latest.id,
                "release_command",
                "running the release command",
            )
            .await?;
            latest.state = "release_command".into();
        } else {
            tx.execute(
                "UPDATE deployments SET release_cmd_done = true WHERE id = $1",
                &[&latest.id],
            )
            .await?;
            set_deployment(tx, latest.id, "rolling", "").await?;
            latest.state = "rolling".into();
        }
        changed = true;
    }
    if latest.state == "release_command" {
        let rel = load_release(tx, latest.release_id).await?;
        let inst = tx
            .query_opt(
                "SELECT id, state, reason, exit_code, signal, health_error, last_logs FROM instances
                 WHERE deployment_id = $1 AND kind = 'release' ORDER BY seq DESC LIMIT 1",
                &[&latest.id],
            )
            .await?;
        match inst {
            None => {
                match create_instance(tx, placer, env, &latest, &rel, Role::ReleaseCommand, &[])
                    .await?
                {
                    Ok(_) => changed = true,
                    Err(why) => notes.push(why),
                }
            }
            Some(i) => {
                let state: String = i.get("state");
                let code: Option<i32> = i.get("exit_code");
                let id: String = i.get("id");
                if state == "exited" && code == Some(0) {
                    stop_instance(tx, &id, 0.0, "release command finished").await?;
                    tx.execute(
                        "UPDATE deployments SET release_cmd_done = true WHERE id = $1",
                        &[&latest.id],
                    )
                    .await?;
                    set_deployment(tx, latest.id, "rolling", "").await?;
                    latest.state = "rolling".into();
                    changed = true;
                } else if TERMINAL.contains(&state.as_str()) {
                    stop_instance(tx, &id, 0.0, "release command ended").await?;
                    let why = format!(
                        "release command failed; the previous release keeps serving: {}",
                        describe(&i)
                    );
                    set_deployment(tx, latest.id, "failed", &why).await?;
                    latest.state = "failed".into();
                    changed = true;
                } else if latest.deadline_passed {
                    stop_instance(tx, &id, 0.0, "release command timed out").await?;
                    let why = format!(
                        "release command did not finish before the deployment deadline; the previous release keeps serving: {}",
                        describe(&i)
                    );
                    set_deployment(tx, latest.id, "failed", &why).await?;
                    latest.state = "failed".into();
                    changed = true;
                }
            }
        }
    }

    // What the process types converge on: the latest deployment once it rolls, else the last
    // one that succeeded (it keeps serving while a release command runs or after a failure).
    let target = if matches!(latest.state.as_str(), "rolling" | "succeeded") {
        Some(latest.clone())
    } else {
        last_succeeded(tx, env.id).await?
    };
    let rolling_latest = latest.state == "rolling";
    let mut groups = serde_json::Map::new();
    if let Some(target) = &target {
        let rel = load_release(tx, target.release_id).await?;
        let rows = tx
            .query(
                "SELECT id, process_type, release_id, secrets_version, host_id, state, ready, seq,
                        reason, exit_code, signal, health_error, last_logs
                 FROM instances WHERE env_id = $1 AND kind = 'service' AND desired = 'run'",
                &[&env.id],
            )
            .await?;
        let mut names: Vec<String> = rel.manifest.processes.keys().cloned().collect();
        for r in &rows {
            let p: String = r.get("process_type");
            if !names.contains(&p) {
                names.push(p);
            }
        }
        let by_id: HashMap<String, &tokio_postgres::Row> =
            rows.iter().map(|r| (r.get::<_, String>("id"), r)).collect();
        let mut all_converged = true;
        let mut failures = 0;
        let mut last_failure = None;
        for name in &names {
            let scale = match rel.manifest.process(name) {
                Some(_) if env.stopped => 0,
                Some(p) => env.scales.get(name).copied().unwrap_or(p.scale),
                None => 0,
            };
            let members: Vec<Inst> = rows
                .iter()
                .filter(|r| &r.get::<_, String>("process_type") == name)
                .map(|r| Inst {
                    id: r.get("id"),
                    up_to_date: r.get::<_, Uuid>("release_id") == target.release_id
                        && r.get::<_, i64>("secrets_version") == target.secrets_version
                        && !draining.contains(&r.get::<_, Uuid>("host_id")),
                    ready: r.get("ready"),
                    dead: TERMINAL.contains(&r.get::<_, String>("state").as_str()),
                    seq: r.get("seq"),
                })
                .collect();
            // A volume attaches to one instance at a time: such a process type runs at most one
            // instance and is replaced stop-then-start, never with a surge.
            let has_volume = rel
                .manifest
                .process(name)
                .is_some_and(|p| !p.volumes.is_empty());
            let (scale, surge, unavailable) = if has_volume {
                (scale.min(1), 0, 1)
            } else {
                (
                    scale,
                    target.max_surge.max(0) as u32,
                    target.max_unavailable.max(0) as u32,
                )
            };
            let plan = rollout::plan_group(scale, surge, unavailable, &members);
            for (id, why) in &plan.stop {
                let m = members.iter().find(|m| &m.id == id);
                if why == &StopReason::Dead && rolling_latest && m.is_some_and(|m| m.up_to_date) {
                    failures += 1;
                    last_failure = by_id.get(id).map(|r| describe(r));
                }
                stop_instance(tx, id, drain_s, why.as_str()).await?;
                changed = true;
            }
            let mut fresh: Vec<String> = members
                .iter()
                .filter(|m| m.up_to_date && !m.dead)
                .map(|m| m.id.clone())
                .collect();
            let mut unplaced = None;
            // ...and only once the instance it replaces has stopped (its VM released the disk).
            let releasing = if has_volume && plan.create > 0 {
                tx.query_one(
                    "SELECT count(*) FROM instances WHERE env_id = $1 AND process_type = $2
                       AND desired = 'stop' AND NOT (state = ANY($3))",
                    &[&env.id, &name, &TERMINAL],
                )
                .await?
                .get::<_, i64>(0)
                    > 0
                    || !plan.stop.is_empty()
            } else {
                false
            };
            if releasing {
                notes.push(format!(
                    "{name}: waiting for the previous instance to stop and release its volume"
                ));
            }
            for _ in 0..if releasing { 0 } else { plan.create } {
                match create_instance(tx, placer, env, target, &rel, Role::Process(name), &fresh)
                    .await?
                {
                    Ok(id) => {
                        fresh.push(id);
                        changed = true;
                    }
                    Err(why) => {
                        unplaced = Some(why.clone());
                        notes.push(why);
                        break;
                    }
                }
            }
            let waiting: Vec<String> = members
                .iter()
                .filter(|m| m.up_to_date && !m.dead && !m.ready)
                .filter_map(|m| by_id.get(&m.id).map(|r| describe(r)))
                .collect();
            if !plan.converged {
                all_converged = false;
            }
            groups.insert(
                name.clone(),
                json!({
                    "scale": scale,
                    "instances": members.len(),
                    "ready_up_to_date": members.iter().filter(|m| m.up_to_date && m.ready).count(),
                    "created": plan.create,
                    "stopped": plan.stop.iter().map(|(i, w)| json!({"id": i, "why": w.as_str()})).collect::<Vec<_>>(),
                    "converged": plan.converged,
                    "unplaced": unplaced,
                    "waiting": waiting,
                }),
            );
        }
        if rolling_latest {
            let total = latest.failures + failures;
            if failures > 0 {
                tx.execute(
                    "UPDATE deployments SET failures = $2, reason = $3, updated_at = now() WHERE id = $1",
                    &[&latest.id, &total, &last_failure.clone().unwrap_or_default()],
                )
                .await?;
            }
            if total >= ctl.config.rollout_max_failures as i32 {
                let why = format!(
                    "{total} instances of the new release failed; the previous release keeps serving. Last: {}",
                    last_failure.unwrap_or_default()
                );
                set_deployment(tx, latest.id, "failed", &why).await?;
                changed = true;
            } else if all_converged {
                set_deployment(tx, latest.id, "succeeded", "").await?;
                changed = true;
            } else if latest.deadline_passed {
                let waiting: Vec<String> = groups
                    .values()
                    .filter_map(|g| g["waiting"].as_array())
                    .flatten()
                    .filter_map(|w| w.as_str().map(str::to_owned))
                    .collect();
                let why = format!(
                    "the new release did not become healthy before the deployment deadline; the previous release keeps serving. {}",
                    if waiting.is_empty() {
                        notes.join("; ")
                    } else {
                        waiting.join("; ")
                    }
                );
                set_deployment(tx, latest.id, "failed", &why).await?;
                changed = true;
            }
        }
    }
    if target.is_none() {
        // Nothing ever succeeded and the latest deployment failed: nothing should run.
        changed |= tx
            .execute(
                "UPDATE instances SET desired = 'stop', stop_at = now(), reason = 'deployment failed'
                 WHERE env_id = $1 AND kind = 'service' AND desired = 'run'",
                &[&env.id],
            )
            .await?
            > 0;
    }
    let status = json!({
        "deployment": latest.id,
        "deployment_state": latest.state,
        "target_deployment": target.as_ref().map(|t| t.id),
        "groups": groups,
        "notes": notes,
    });
    tx.execute(
        "INSERT INTO reconciler_status (reconciler, key, status, at) VALUES ('rollout', $1, $2, now())
         ON CONFLICT (reconciler, key) DO UPDATE SET status = EXCLUDED.status, at = now()",
        &[&env.id.to_string(), &status],
    )
    .await?;
    Ok(changed)
}
