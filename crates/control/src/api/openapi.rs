//! The OpenAPI document, generated from the handlers' annotations. The checked-in copy
//! (`docs/openapi.json`) is compared with it by a test, so it cannot drift.

use utoipa::openapi::security::{Http, HttpAuthScheme, SecurityScheme};
use utoipa::{Modify, OpenApi};

use super::handlers::*;

struct Bearer;

impl Modify for Bearer {
    fn modify(&self, doc: &mut utoipa::openapi::OpenApi) {
        let c = doc.components.get_or_insert_with(Default::default);
        c.add_security_scheme(
            "bearer",
            SecurityScheme::Http(Http::new(HttpAuthScheme::Bearer)),
        );
    }
}

#[derive(OpenApi)]
#[openapi(
    info(title = "Scalebox control plane API", version = "1", description = "Orgs, apps, environments, releases, routes, secrets, volumes, hosts and tokens. Errors are `{\"error\": \"...\", \"code\": \"...\"}`."),
    modifiers(&Bearer),
    paths(
        health, openapi_json, whoami, orgs_list, orgs_create, orgs_get, orgs_delete, tokens_list, tokens_create, tokens_revoke,
        projects_list, projects_create, projects_get, projects_delete, apps_list, apps_create, apps_get, apps_update,
        apps_delete, envs_list, envs_create, envs_get, envs_delete, envs_ipv4_enable, envs_ipv4_disable, secrets_get, secrets_update, secrets_versions,
        agent_secrets, releases_list, releases_create, releases_get, routes_list, routes_create, routes_get,
        routes_delete, volumes_list, volumes_create, volumes_get, volumes_delete, volume_snapshots_list,
        volume_snapshots_create, volume_snapshots_delete, volume_backups_list, volume_backups_create, volume_restore, images_head, images_put, agent_image, hosts_list, hosts_create, hosts_get,
        hosts_delete, events_list, envs_deploy, envs_scale, envs_stop, envs_start, envs_status, envs_deployments,
        hosts_drain, hosts_undrain, envs_logs, envs_exec, envs_attach, agent_join, agent_desired, agent_overlay, agent_report, edge_table
    )
)]
struct Doc;

/// The OpenAPI document as JSON.
pub fn document() -> serde_json::Value {
    serde_json::to_value(Doc::openapi()).expect("the OpenAPI document serializes")
}
