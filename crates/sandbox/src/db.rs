//! The sandbox tables (`sandbox_vms`, `sandbox_templates`): every query that serves a user is
//! scoped by org; the unscoped ones are for allocation and recovery on this host.

use scalebox_store::{Db, StoreError};
use time::OffsetDateTime;
use tokio_postgres::Row;
use uuid::Uuid;

/// A VM row.
#[derive(Debug, Clone, PartialEq)]
pub struct VmRow {
    pub id: String,
    pub org_id: Uuid,
    pub name: String,
    pub template: String,
    pub ip: String,
    pub ssh_port: u16,
    pub tap: String,
    pub vcpu_count: u32,
    pub mem_size_mib: u32,
    pub disk_size_gib: u32,
    pub state: String,
    pub created_at: OffsetDateTime,
}

const VM_COLS: &str = "id, org_id, name, template, ip, ssh_port, tap, vcpu_count, mem_size_mib, disk_size_gib, state, created_at";

fn vm(r: &Row) -> VmRow {
    VmRow {
        id: r.get(0),
        org_id: r.get(1),
        name: r.get(2),
        template: r.get(3),
        ip: r.get(4),
        ssh_port: r.get::<_, i32>(5) as u16,
        tap: r.get(6),
        vcpu_count: r.get::<_, i32>(7) as u32,
        mem_size_mib: r.get::<_, i32>(8) as u32,
        disk_size_gib: r.get::<_, i32>(9) as u32,
        state: r.get(10),
        created_at: r.get(11),
    }
}

/// Every VM on this host (allocation, recovery, `/info`, `/caddy/check`).
pub async fn all_vms(db: &Db) -> Result<Vec<VmRow>, StoreError> {
    let c = db.client().await?;
    let rows = c
        .query(
            &format!("SELECT {VM_COLS} FROM sandbox_vms ORDER BY created_at, id"),
            &[],
        )
        .await?;
    Ok(rows.iter().map(vm).collect())
}

/// The org's VMs, oldest first.
pub async fn org_vms(db: &Db, org: Uuid) -> Result<Vec<VmRow>, StoreError> {
    let c = db.client().await?;
    let rows = c
        .query(
            &format!("SELECT {VM_COLS} FROM sandbox_vms WHERE org_id = $1 ORDER BY created_at, id"),
            &[&org],
        )
        .await?;
    Ok(rows.iter().map(vm).collect())
}

/// The org's VM with this id or name.
pub async fn find_vm(db: &Db, org: Uuid, id_or_name: &str) -> Result<Option<VmRow>, StoreError> {
    let c = db.client().await?;
    let row = c
        .query_opt(
            &format!(
                "SELECT {VM_COLS} FROM sandbox_vms WHERE org_id = $1 AND (id = $2 OR name = $2)"
            ),
            &[&org, &id_or_name],
        )
        .await?;
    Ok(row.as_ref().map(vm))
}

/// Inserts a new VM; a unique violation (name, ip, port, tap taken meanwhile) is a conflict.
pub async fn insert_vm(db: &Db, v: &VmRow) -> Result<(), StoreError> {
    let c = db.client().await?;
    c.execute(
        &format!(
            "INSERT INTO sandbox_vms ({VM_COLS}) VALUES ($1,$2,$3,$4,$5,$6,$7,$8,$9,$10,$11,$12)"
        ),
        &[
            &v.id,
            &v.org_id,
            &v.name,
            &v.template,
            &v.ip,
            &(v.ssh_port as i32),
            &v.tap,
            &(v.vcpu_count as i32),
            &(v.mem_size_mib as i32),
            &(v.disk_size_gib as i32),
            &v.state,
            &v.created_at,
        ],
    )
    .await
    .map_err(|e| {
        if e.code() == Some(&tokio_postgres::error::SqlState::UNIQUE_VIOLATION) {
            StoreError::Conflict(format!("VM name {:?} is already taken", v.name))
        } else {
            e.into()
        }
    })?;
    Ok(())
}

pub async fn set_state(db: &Db, id: &str, state: &str) -> Result<(), StoreError> {
    let c = db.client().await?;
    c.execute(
        "UPDATE sandbox_vms SET state = $2 WHERE id = $1",
        &[&id, &state],
    )
    .await?;
    Ok(())
}

pub async fn delete_vm(db: &Db, id: &str) -> Result<(), StoreError> {
    let c = db.client().await?;
    c.execute("DELETE FROM sandbox_vms WHERE id = $1", &[&id])
        .await?;
    Ok(())
}

/// Owners of snapshot templates: name → org.
pub async fn template_owners(db: &Db) -> Result<Vec<(String, Uuid, OffsetDateTime)>, StoreError> {
    let c = db.client().await?;
    let rows = c
        .query(
            "SELECT name, org_id, created_at FROM sandbox_templates",
            &[],
        )
        .await?;
    Ok(rows
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect())
}

pub async fn insert_template(
    db: &Db,
    name: &str,
    org: Uuid,
    source_vm: &str,
) -> Result<(), StoreError> {
    let c = db.client().await?;
    c.execute(
        "INSERT INTO sandbox_templates (name, org_id, source_vm) VALUES ($1, $2, $3)
         ON CONFLICT (name) DO UPDATE SET org_id = $2, source_vm = $3, created_at = now()",
        &[&name, &org, &source_vm],
    )
    .await?;
    Ok(())
}

pub async fn delete_template(db: &Db, name: &str) -> Result<(), StoreError> {
    let c = db.client().await?;
    c.execute("DELETE FROM sandbox_templates WHERE name = $1", &[&name])
        .await?;
    Ok(())
}
