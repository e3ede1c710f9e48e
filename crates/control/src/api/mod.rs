//! HTTP surface under `/v1`: routing, thin handlers (extract → call `ops` → respond), and the
//! generated OpenAPI document.

pub mod extract;
mod handlers;
pub mod openapi;
mod vms;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::routing::{get, post};

use crate::{ApiError, Control};
use handlers::*;

/// The API router.
pub fn router(ctl: Control) -> Router {
    let limit = ctl.config.body_limit;
    Router::new()
        .route("/v1/health", get(health))
        .route("/v1/openapi.json", get(openapi_json))
        .route("/v1/whoami", get(whoami))
        .route("/v1/orgs", get(orgs_list).post(orgs_create))
        .route("/v1/orgs/{org}", get(orgs_get).delete(orgs_delete))
        .route(
            "/v1/orgs/{org}/tokens",
            get(tokens_list).post(tokens_create),
        )
        .route(
            "/v1/orgs/{org}/tokens/{id}",
            axum::routing::delete(tokens_revoke),
        )
        .route(
            "/v1/orgs/{org}/projects",
            get(projects_list).post(projects_create),
        )
        .route(
            "/v1/orgs/{org}/projects/{project}",
            get(projects_get).delete(projects_delete),
        )
        .route("/v1/orgs/{org}/apps", get(apps_list).post(apps_create))
        .route(
            "/v1/orgs/{org}/apps/{app}",
            get(apps_get).patch(apps_update).delete(apps_delete),
        )
        .route(
            "/v1/orgs/{org}/apps/{app}/envs",
            get(envs_list).post(envs_create),
        )
        .route(
            "/v1/orgs/{org}/apps/{app}/envs/{env}",
            get(envs_get).delete(envs_delete),
        )
        .route(
            "/v1/orgs/{org}/apps/{app}/envs/{env}/ipv4",
            post(envs_ipv4_enable).delete(envs_ipv4_disable),
        )
        .route(
            "/v1/orgs/{org}/apps/{app}/envs/{env}/secrets",
            get(secrets_get).patch(secrets_update),
        )
        .route(
            "/v1/orgs/{org}/apps/{app}/envs/{env}/secrets/versions",
            get(secrets_versions),
        )
        .route(
            "/v1/orgs/{org}/apps/{app}/releases",
            get(releases_list).post(releases_create),
        )
        .route(
            "/v1/orgs/{org}/apps/{app}/releases/{release}",
            get(releases_get),
        )
        .route(
            "/v1/orgs/{org}/routes",
            get(routes_list).post(routes_create),
        )
        .route(
            "/v1/orgs/{org}/routes/{id}",
            get(routes_get).delete(routes_delete),
        )
        .route(
            "/v1/orgs/{org}/volumes",
            get(volumes_list).post(volumes_create),
        )
        .route(
            "/v1/orgs/{org}/volumes/{volume}",
            get(volumes_get).delete(volumes_delete),
        )
        .route(
            "/v1/orgs/{org}/volumes/{volume}/snapshots",
            get(volume_snapshots_list).post(volume_snapshots_create),
        )
        .route(
            "/v1/orgs/{org}/volumes/{volume}/snapshots/{id}",
            axum::routing::delete(volume_snapshots_delete),
        )
        .route(
            "/v1/orgs/{org}/volumes/{volume}/backups",
            get(volume_backups_list).post(volume_backups_create),
        )
        .route(
            "/v1/orgs/{org}/volumes/{volume}/restore",
            post(volume_restore),
        )
        .route(
            "/v1/orgs/{org}/images/{digest}",
            axum::routing::put(images_put).head(images_head),
        )
        .route("/v1/agent/images/{digest}", get(agent_image))
        .route("/v1/orgs/{org}/events", get(events_list))
        .route("/v1/hosts", get(hosts_list).post(hosts_create))
        .route("/v1/hosts/{host}", get(hosts_get).delete(hosts_delete))
        .route(
            "/v1/orgs/{org}/apps/{app}/envs/{env}/deploy",
            post(envs_deploy),
        )
        .route(
            "/v1/orgs/{org}/apps/{app}/envs/{env}/scale",
            post(envs_scale),
        )
        .route("/v1/orgs/{org}/apps/{app}/envs/{env}/stop", post(envs_stop))
        .route(
            "/v1/orgs/{org}/apps/{app}/envs/{env}/start",
            post(envs_start),
        )
        .route(
            "/v1/orgs/{org}/apps/{app}/envs/{env}/status",
            get(envs_status),
        )
        .route(
            "/v1/orgs/{org}/apps/{app}/envs/{env}/deployments",
            get(envs_deployments),
        )
        .route("/v1/orgs/{org}/apps/{app}/envs/{env}/logs", get(envs_logs))
        .route("/v1/orgs/{org}/apps/{app}/envs/{env}/exec", post(envs_exec))
        .route(
            "/v1/orgs/{org}/apps/{app}/envs/{env}/attach",
            get(envs_attach),
        )
        .route("/v1/hosts/{host}/drain", post(hosts_drain))
        .route("/v1/hosts/{host}/undrain", post(hosts_undrain))
        .route("/v1/agent/secrets/{env_id}/{version}", get(agent_secrets))
        .route("/v1/agent/join", post(agent_join))
        .route("/v1/agent/desired", get(agent_desired))
        .route("/v1/agent/overlay", get(agent_overlay))
        .route("/v1/agent/report", post(agent_report))
        .route("/v1/edge/table", get(edge_table))
        // The VM sandbox surface lives at the root (reference/scalebox-vm-api.md).
        .route("/health", get(vms::health))
        .route("/info", get(vms::info))
        .route("/caddy/check", get(vms::caddy_check))
        .route("/templates", get(vms::templates_list))
        .route(
            "/templates/{name}",
            axum::routing::delete(vms::templates_delete),
        )
        .route("/vms", get(vms::vms_list).post(vms::vms_create))
        .route("/vms/{id}", get(vms::vms_get).delete(vms::vms_delete))
        .route("/vms/{id}/snapshot", post(vms::vms_snapshot))
        .fallback(|| async { ApiError::not_found("endpoint") })
        .method_not_allowed_fallback(|| async {
            ApiError::new(
                axum::http::StatusCode::METHOD_NOT_ALLOWED,
                "method_not_allowed",
                "method not allowed on this endpoint",
            )
        })
        .layer(DefaultBodyLimit::max(limit))
        .with_state(ctl)
}
