//! Semantic validation and normalisation: turns a [`RawManifest`] into a [`Manifest`], collecting
//! every problem (with the position of the offending key) instead of stopping at the first.

use std::collections::{BTreeMap, BTreeSet};
use std::ops::{Range, RangeInclusive};

use toml::Spanned;

use crate::error::{Locator, ManifestError};
use crate::model::*;
use crate::paths::{check_absolute_path, check_hostname, is_under};
use crate::raw::*;

/// Largest `scale` a manifest may ask for.
pub const MAX_SCALE: i64 = 1000;

struct Checker<'a> {
    loc: &'a Locator<'a>,
    errors: Vec<ManifestError>,
}

pub(crate) fn validate(
    raw: RawManifest,
    loc: &Locator<'_>,
) -> Result<Manifest, Vec<ManifestError>> {
    let mut c = Checker {
        loc,
        errors: Vec::new(),
    };
    let manifest = c.manifest(raw);
    if c.errors.is_empty() {
        Ok(manifest)
    } else {
        Err(c.errors)
    }
}

impl Checker<'_> {
    fn err(&mut self, span: Range<usize>, message: impl Into<String>) {
        self.errors.push(self.loc.error(span, message));
    }

    /// Value of an optional integer field, checked against `range`; `default` when absent or bad.
    fn int(
        &mut self,
        field: &Option<Spanned<i64>>,
        name: &str,
        range: RangeInclusive<i64>,
        default: i64,
        unit: &str,
    ) -> i64 {
        match field {
            None => default,
            Some(v) => self.int_req(v, name, range, unit).unwrap_or(default),
        }
    }

    fn int_req(
        &mut self,
        v: &Spanned<i64>,
        name: &str,
        range: RangeInclusive<i64>,
        unit: &str,
    ) -> Option<i64> {
        let n = *v.get_ref();
        if range.contains(&n) {
            Some(n)
        } else {
            self.err(
                v.span(),
                format!(
                    "`{name}` = {n} is out of range: use {}..={}{unit}",
                    range.start(),
                    range.end()
                ),
            );
            None
        }
    }

    fn port(&mut self, v: &Spanned<i64>, name: &str) -> Option<u16> {
        self.int_req(v, name, 1..=65535, "").map(|p| p as u16)
    }

    fn manifest(&mut self, raw: RawManifest) -> Manifest {
        match &raw.schema_version {
            None => self.err(
                0..0,
                "missing `schema_version`: add `schema_version = 1` at the top of the file",
            ),
            Some(v) if *v.get_ref() != 1 => self.err(
                v.span(),
                format!(
                    "unsupported `schema_version` = {}: this version of Scalebox understands \
                     schema_version = 1 only",
                    v.get_ref()
                ),
            ),
            Some(_) => {}
        }
        let base = Resources {
            cpu: DEFAULT_CPU,
            memory_mb: DEFAULT_MEMORY_MB,
        };
        let defaults = self.resources(raw.resources.as_ref(), base);
        let env = self.env(raw.env.unwrap_or_default());
        let secrets = self.secrets(raw.secrets);
        let release = raw.release.map(|r| self.release(r, defaults));
        let processes = self.processes(raw.processes, defaults, &secrets);
        let routes = self.routes(raw.routes.unwrap_or_default(), &processes);
        Manifest {
            schema_version: 1,
            env,
            secrets,
            release,
            processes,
            routes,
        }
    }

    fn resources(&mut self, raw: Option<&Spanned<RawResources>>, base: Resources) -> Resources {
        let Some(raw) = raw else { return base };
        let raw = raw.get_ref();
        let mut out = base;
        if let Some(cpu) = &raw.cpu {
            let v = *cpu.get_ref();
            if v > 0.0 && v <= 64.0 {
                out.cpu = v;
            } else {
                self.err(
                    cpu.span(),
                    format!("`cpu` = {v} is out of range: use a number greater than 0 and at most 64 (vCPUs)"),
                );
            }
        }
        out.memory_mb = self.int(
            &raw.memory_mb,
            "memory_mb",
            64..=65536,
            base.memory_mb.into(),
            " (MiB)",
        ) as u32;
        out
    }

    fn env(&mut self, raw: BTreeMap<Spanned<String>, Spanned<String>>) -> BTreeMap<String, String> {
        let mut out = BTreeMap::new();
        for (k, v) in raw {
            let key = k.get_ref();
            let valid = !key.is_empty()
                && !key.as_bytes()[0].is_ascii_digit()
                && key.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
            if !valid {
                self.err(
                    k.span(),
                    format!(
                        "environment variable name {key:?} is invalid: use letters, digits and '_', \
                         not starting with a digit"
                    ),
                );
            } else if key.starts_with("SCALEBOX_") {
                self.err(
                    k.span(),
                    format!(
                        "environment variable {key} uses the reserved prefix SCALEBOX_: rename it"
                    ),
                );
            }
            if v.get_ref().contains('\0') {
                self.err(
                    v.span(),
                    format!("the value of environment variable {key} contains a NUL byte"),
                );
            }
            out.insert(k.into_inner(), v.into_inner());
        }
        out
    }

    fn secrets(&mut self, raw: Option<RawSecrets>) -> Secrets {
        let mut out = Secrets {
            path: DEFAULT_SECRETS_PATH.to_owned(),
            as_env: false,
        };
        if let Some(raw) = raw {
            if let Some(p) = raw.path {
                if let Err(why) = check_absolute_path(p.get_ref()) {
                    self.err(p.span(), format!("`secrets.path` {why}"));
                }
                out.path = p.into_inner();
            }
            out.as_env = raw.as_env.unwrap_or(false);
        }
        out
    }

    fn command(&mut self, cmd: &Spanned<Vec<String>>, what: &str, hint: &str) {
        let argv = cmd.get_ref();
        if argv.first().is_none_or(|a| a.is_empty()) {
            self.err(cmd.span(), format!("{what} `command` must be a non-empty list whose first item is the program{hint}"));
        } else if argv.iter().any(|a| a.contains('\0')) {
            self.err(cmd.span(), format!("{what} `command` contains a NUL byte"));
        }
    }

    fn release(&mut self, raw: Spanned<RawRelease>, defaults: Resources) -> ReleaseCommand {
        let raw = raw.into_inner();
        self.command(&raw.command, "release", "");
        let timeout_s = self.int(
            &raw.timeout_s,
            "timeout_s",
            1..=86400,
            DEFAULT_RELEASE_TIMEOUT_S.into(),
            " seconds",
        );
        let resources = self.resources(raw.resources.as_ref(), defaults);
        ReleaseCommand {
            command: raw.command.into_inner(),
            timeout_s: timeout_s as u32,
            resources,
        }
    }

    fn processes(
        &mut self,
        raw: Option<Spanned<BTreeMap<Spanned<String>, Spanned<RawProcess>>>>,
        defaults: Resources,
        secrets: &Secrets,
    ) -> BTreeMap<String, ProcessType> {
        let (span, raw) = match raw {
            Some(r) => (r.span(), r.into_inner()),
            None => (0..0, BTreeMap::new()),
        };
        if raw.is_empty() {
            self.err(
                span,
                "no process types: add at least one `[processes.<name>]` table, e.g. `[processes.web]`",
            );
        }
        let mut out = BTreeMap::new();
        // volume name -> process type that mounts it
        let mut volume_owner: BTreeMap<String, String> = BTreeMap::new();
        for (name, proc_) in raw {
            if let Err(e) = scalebox_types::name::validate(name.get_ref()) {
                self.err(name.span(), format!("process type {e}"));
            }
            let p = self.process(name.get_ref(), proc_, defaults, secrets, &mut volume_owner);
            out.insert(name.into_inner(), p);
        }
        out
    }

    fn process(
        &mut self,
        name: &str,
        raw: Spanned<RawProcess>,
        defaults: Resources,
        secrets: &Secrets,
        volume_owner: &mut BTreeMap<String, String>,
    ) -> ProcessType {
        let table_span = raw.span();
        let raw = raw.into_inner();
        if let Some(cmd) = &raw.command {
            self.command(
                cmd,
                &format!("process type `{name}`:"),
                "; omit `command` to run the image's ENTRYPOINT/CMD",
            );
        }
        let mut ports = BTreeSet::new();
        for p in raw.ports.iter().flatten() {
            if let Some(port) = self.port(p, "ports")
                && !ports.insert(port)
            {
                self.err(p.span(), format!("port {port} is listed twice in `ports`"));
            }
        }
        let ports: Vec<u16> = ports.into_iter().collect();
        let scale = self.int(&raw.scale, "scale", 0..=MAX_SCALE, DEFAULT_SCALE.into(), "") as u32;
        let stop_grace_s = self.int(
            &raw.stop_grace_s,
            "stop_grace_s",
            0..=3600,
            DEFAULT_STOP_GRACE_S.into(),
            " seconds",
        ) as u32;
        let resources = self.resources(raw.resources.as_ref(), defaults);
        let health = raw.health.map(|h| self.health(name, h, &ports));

        let mut volumes: Vec<VolumeMount> = Vec::new();
        for v in raw.volumes.into_iter().flatten() {
            let RawVolume { name: vname, path } = v.into_inner();
            if let Err(e) = scalebox_types::name::validate(vname.get_ref()) {
                self.err(vname.span(), format!("volume {e}"));
            }
            if let Err(why) = check_absolute_path(path.get_ref()) {
                self.err(path.span(), format!("volume mount path {why}"));
            } else if is_under(&secrets.path, path.get_ref()) {
                self.err(
                    path.span(),
                    format!(
                        "volume mount path {:?} would hide the secrets file {:?}: mount the volume elsewhere or change `secrets.path`",
                        path.get_ref(),
                        secrets.path
                    ),
                );
            }
            if volumes.iter().any(|m| m.name == *vname.get_ref()) {
                self.err(
                    vname.span(),
                    format!(
                        "volume `{}` is mounted twice in process type `{name}`",
                        vname.get_ref()
                    ),
                );
            }
            if volumes.iter().any(|m| m.path == *path.get_ref()) {
                self.err(
                    path.span(),
                    format!(
                        "two volumes are mounted at {:?} in process type `{name}`",
                        path.get_ref()
                    ),
                );
            }
            match volume_owner.get(vname.get_ref()) {
                Some(other) if other != name => self.err(
                    vname.span(),
                    format!(
                        "volume `{}` is already mounted by process type `{other}`: a volume belongs to one process type",
                        vname.get_ref()
                    ),
                ),
                _ => {
                    volume_owner.insert(vname.get_ref().clone(), name.to_owned());
                }
            }
            volumes.push(VolumeMount {
                name: vname.into_inner(),
                path: path.into_inner(),
            });
        }
        volumes.sort();
        if !volumes.is_empty() && scale > 1 {
            let span = raw.scale.as_ref().map_or(table_span, |s| s.span());
            self.err(
                span,
                format!(
                    "process type `{name}` mounts a volume, so its `scale` must be 0 or 1 (a volume attaches to one instance), got {scale}"
                ),
            );
        }
        ProcessType {
            command: raw.command.map(Spanned::into_inner),
            ports,
            scale,
            stop_grace_s,
            resources,
            health,
            volumes,
        }
    }

    fn health(&mut self, name: &str, raw: Spanned<RawHealth>, ports: &[u16]) -> HealthCheck {
        let span = raw.span();
        let raw = raw.into_inner();
        let list = || {
            if ports.is_empty() {
                "it has no `ports`".to_owned()
            } else {
                let l: Vec<String> = ports.iter().map(u16::to_string).collect();
                format!("its ports are {}", l.join(", "))
            }
        };
        let port = match &raw.port {
            Some(p) => match self.port(p, "health.port") {
                Some(port) if !ports.contains(&port) => {
                    self.err(
                        p.span(),
                        format!(
                            "health port {port} is not a port of process type `{name}` ({}): add it to `ports` or fix `health.port`",
                            list()
                        ),
                    );
                    port
                }
                Some(port) => port,
                None => 0,
            },
            None if ports.len() == 1 => ports[0],
            None => {
                self.err(
                    span.clone(),
                    format!(
                        "health check of process type `{name}` needs a `port` ({})",
                        list()
                    ),
                );
                0
            }
        };
        let path = match (raw.kind, raw.path) {
            (HealthKind::Http, None) => Some("/".to_owned()),
            (HealthKind::Http, Some(p)) => {
                if !p.get_ref().starts_with('/')
                    || p.get_ref().chars().any(|c| c.is_control() || c == ' ')
                {
                    self.err(p.span(), format!("health `path` {:?} must start with '/' and contain no spaces or control characters", p.get_ref()));
                }
                Some(p.into_inner())
            }
            (HealthKind::Tcp, Some(p)) => {
                self.err(
                    p.span(),
                    "health `path` is only allowed with kind = \"http\"",
                );
                None
            }
            (HealthKind::Tcp, None) => None,
        };
        let interval_s = self.int(
            &raw.interval_s,
            "interval_s",
            1..=3600,
            DEFAULT_HEALTH_INTERVAL_S.into(),
            " seconds",
        );
        let timeout_s = self.int(
            &raw.timeout_s,
            "timeout_s",
            1..=3600,
            DEFAULT_HEALTH_TIMEOUT_S.into(),
            " seconds",
        );
        if timeout_s > interval_s {
            let s = raw
                .timeout_s
                .as_ref()
                .or(raw.interval_s.as_ref())
                .map_or(span.clone(), |s| s.span());
            self.err(
                s,
                format!(
                    "health `timeout_s` ({timeout_s}) must not exceed `interval_s` ({interval_s})"
                ),
            );
        }
        let grace_s = self.int(
            &raw.grace_s,
            "grace_s",
            0..=3600,
            DEFAULT_HEALTH_GRACE_S.into(),
            " seconds",
        );
        let healthy = self.int(
            &raw.healthy_threshold,
            "healthy_threshold",
            1..=100,
            DEFAULT_HEALTHY_THRESHOLD.into(),
            "",
        );
        let unhealthy = self.int(
            &raw.unhealthy_threshold,
            "unhealthy_threshold",
            1..=100,
            DEFAULT_UNHEALTHY_THRESHOLD.into(),
            "",
        );
        HealthCheck {
            kind: raw.kind,
            port,
            path,
            interval_s: interval_s as u32,
            timeout_s: timeout_s as u32,
            grace_s: grace_s as u32,
            healthy_threshold: healthy as u32,
            unhealthy_threshold: unhealthy as u32,
        }
    }

    fn routes(
        &mut self,
        raw: Vec<Spanned<RawRoute>>,
        processes: &BTreeMap<String, ProcessType>,
    ) -> Vec<Route> {
        let mut out = Vec::new();
        // listener (hostname or "", port) -> taken; tcp ports and tls ports for conflicts
        let mut tls_listeners: BTreeSet<(String, u16)> = BTreeSet::new();
        let mut tls_ports: BTreeMap<u16, Range<usize>> = BTreeMap::new();
        let mut tcp_ports: BTreeMap<u16, Range<usize>> = BTreeMap::new();
        for r in raw {
            let span = r.span();
            let r = r.into_inner();
            let process = processes.get(r.process.get_ref());
            if process.is_none() {
                let names: Vec<&str> = processes.keys().map(String::as_str).collect();
                self.err(
                    r.process.span(),
                    format!(
                        "route targets process type `{}`, which is not defined (defined: {})",
                        r.process.get_ref(),
                        if names.is_empty() {
                            "none".to_owned()
                        } else {
                            names.join(", ")
                        }
                    ),
                );
            }
            if let Some(h) = &r.hostname
                && let Err(why) = check_hostname(h.get_ref())
            {
                self.err(
                    h.span(),
                    format!("route hostname {:?} is invalid: {why}", h.get_ref()),
                );
            }
            let port = match (&r.port, r.kind) {
                (Some(p), _) => self.port(p, "port"),
                (None, RouteKind::Tls) => Some(DEFAULT_TLS_PORT),
                (None, RouteKind::Tcp) => None,
            };
            let port_span = r.port.as_ref().map_or(span.clone(), |p| p.span());
            match r.kind {
                RouteKind::Tls => {
                    match &r.hostname {
                        None => self.err(span.clone(), "a route with kind = \"tls\" needs a `hostname` (the SNI name clients connect to)"),
                        Some(h) => {
                            if let Some(p) = port
                                && !tls_listeners.insert((h.get_ref().clone(), p)) {
                                    self.err(h.span(), format!("two tls routes for hostname {:?} on port {p}", h.get_ref()));
                                }
                        }
                    }
                    if let Some(p) = port {
                        tls_ports.entry(p).or_insert(port_span);
                    }
                }
                RouteKind::Tcp => {
                    if let Some(p) = port
                        && tcp_ports.insert(p, port_span.clone()).is_some()
                    {
                        self.err(port_span, format!("two tcp routes listen on port {p}"));
                    }
                }
            }
            let backend_port = self.port(&r.backend_port, "backend_port");
            if let (Some(bp), Some(proc_)) = (backend_port, process)
                && !proc_.ports.contains(&bp)
            {
                self.err(
                        r.backend_port.span(),
                        format!(
                            "backend_port {bp} is not a port of process type `{}`: add it to that process type's `ports`",
                            r.process.get_ref()
                        ),
                    );
            }
            out.push(Route {
                process: r.process.into_inner(),
                kind: r.kind,
                hostname: r.hostname.map(Spanned::into_inner),
                port,
                backend_port: backend_port.unwrap_or(0),
                proxy_protocol: r.proxy_protocol.unwrap_or(ProxyProtocol::Off),
                ipv4: r.ipv4.unwrap_or(false),
            });
        }
        for (p, span) in tcp_ports {
            if tls_ports.contains_key(&p) {
                self.err(span, format!("tcp route port {p} is also used by a tls route: pick another port or omit it to get one allocated"));
            }
        }
        out.sort();
        out
    }
}
