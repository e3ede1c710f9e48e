//! Agent metrics and their Prometheus text exposition (written by hand: counters, gauges and
//! fixed-bucket histograms).

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::Mutex;

use crate::backend::Usage;
use crate::state::InstanceState;

const BUCKETS: [f64; 12] = [
    0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0,
];

#[derive(Debug, Default, Clone)]
struct Histogram {
    counts: [u64; BUCKETS.len()],
    sum: f64,
    count: u64,
}

impl Histogram {
    fn observe(&mut self, v: f64) {
        for (i, b) in BUCKETS.iter().enumerate() {
            if v <= *b {
                self.counts[i] += 1;
            }
        }
        self.sum += v;
        self.count += 1;
    }

    fn render(&self, out: &mut String, name: &str, help: &str) {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
        for (i, b) in BUCKETS.iter().enumerate() {
            let _ = writeln!(out, "{name}_bucket{{le=\"{b}\"}} {}", self.counts[i]);
        }
        let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {}", self.count);
        let _ = writeln!(out, "{name}_sum {}", self.sum);
        let _ = writeln!(out, "{name}_count {}", self.count);
    }
}

#[derive(Debug, Default)]
struct Inner {
    boot: Histogram,
    rootfs_build: Histogram,
    cache_hits: u64,
    cache_misses: u64,
    vmm_failures: BTreeMap<String, u64>,
    health_failures: u64,
}

/// Process-wide agent metrics.
#[derive(Debug, Default)]
pub struct Metrics {
    inner: Mutex<Inner>,
}

/// Per-instance numbers gathered at scrape time.
pub struct InstanceSample {
    pub id: String,
    pub state: InstanceState,
    pub usage: Option<Usage>,
}

fn escape(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

impl Metrics {
    fn with<R>(&self, f: impl FnOnce(&mut Inner) -> R) -> R {
        f(&mut self.inner.lock().unwrap_or_else(|p| p.into_inner()))
    }
    /// Seconds from boot request to the workload running.
    pub fn observe_boot(&self, secs: f64) {
        self.with(|m| m.boot.observe(secs));
    }
    pub fn observe_rootfs_build(&self, secs: f64) {
        self.with(|m| m.rootfs_build.observe(secs));
    }
    pub fn image_cache(&self, hit: bool) {
        self.with(|m| {
            if hit {
                m.cache_hits += 1
            } else {
                m.cache_misses += 1
            }
        });
    }
    pub fn vmm_failure(&self, kind: &str) {
        self.with(|m| *m.vmm_failures.entry(kind.to_string()).or_default() += 1);
    }
    pub fn health_failure(&self) {
        self.with(|m| m.health_failures += 1);
    }

    /// Renders everything in the Prometheus text format (version 0.0.4).
    pub fn render(&self, instances: &[InstanceSample]) -> String {
        let mut out = String::new();
        let mut by_state: BTreeMap<&str, u64> =
            InstanceState::ALL.iter().map(|s| (s.as_str(), 0)).collect();
        for i in instances {
            *by_state.entry(i.state.as_str()).or_default() += 1;
        }
        out.push_str("# HELP scalebox_agent_instances Instances by state.\n# TYPE scalebox_agent_instances gauge\n");
        for (s, n) in by_state {
            let _ = writeln!(out, "scalebox_agent_instances{{state=\"{s}\"}} {n}");
        }
        self.with(|m| {
            m.boot.render(
                &mut out,
                "scalebox_agent_boot_seconds",
                "Time from boot request to workload running.",
            );
            m.rootfs_build.render(
                &mut out,
                "scalebox_agent_rootfs_build_seconds",
                "Time to build an image's root filesystem (cache misses).",
            );
            let _ = writeln!(
                out,
                "# HELP scalebox_agent_image_cache_total Image cache lookups.\n# TYPE scalebox_agent_image_cache_total counter\nscalebox_agent_image_cache_total{{result=\"hit\"}} {}\nscalebox_agent_image_cache_total{{result=\"miss\"}} {}",
                m.cache_hits, m.cache_misses
            );
            out.push_str("# HELP scalebox_agent_vmm_failures_total VMM failures by kind.\n# TYPE scalebox_agent_vmm_failures_total counter\n");
            for (k, n) in &m.vmm_failures {
                let _ = writeln!(
                    out,
                    "scalebox_agent_vmm_failures_total{{kind=\"{}\"}} {n}",
                    escape(k)
                );
            }
            let _ = writeln!(
                out,
                "# HELP scalebox_agent_health_check_failures_total Failed health probes.\n# TYPE scalebox_agent_health_check_failures_total counter\nscalebox_agent_health_check_failures_total {}",
                m.health_failures
            );
        });
        out.push_str("# HELP scalebox_agent_instance_cpu_seconds_total CPU time used by the instance's VMM.\n# TYPE scalebox_agent_instance_cpu_seconds_total counter\n");
        for i in instances {
            if let Some(u) = i.usage {
                let _ = writeln!(
                    out,
                    "scalebox_agent_instance_cpu_seconds_total{{instance=\"{}\"}} {}",
                    escape(&i.id),
                    u.cpu_seconds
                );
            }
        }
        out.push_str("# HELP scalebox_agent_instance_memory_bytes Memory used by the instance's VMM.\n# TYPE scalebox_agent_instance_memory_bytes gauge\n");
        for i in instances {
            if let Some(u) = i.usage {
                let _ = writeln!(
                    out,
                    "scalebox_agent_instance_memory_bytes{{instance=\"{}\"}} {}",
                    escape(&i.id),
                    u.memory_bytes
                );
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_text_format() {
        let m = Metrics::default();
        m.observe_boot(0.3);
        m.observe_boot(7.0);
        m.image_cache(true);
        m.image_cache(false);
        m.vmm_failure("spawn");
        let t = m.render(&[InstanceSample {
            id: "a\"b".into(),
            state: InstanceState::Ready,
            usage: Some(Usage {
                cpu_seconds: 1.5,
                memory_bytes: 4096,
            }),
        }]);
        assert!(t.contains("scalebox_agent_instances{state=\"ready\"} 1\n"));
        assert!(t.contains("scalebox_agent_instances{state=\"failed\"} 0\n"));
        assert!(t.contains("scalebox_agent_boot_seconds_bucket{le=\"0.5\"} 1\n"));
        assert!(t.contains("scalebox_agent_boot_seconds_bucket{le=\"10\"} 2\n"));
        assert!(t.contains("scalebox_agent_boot_seconds_count 2\n"));
        assert!(t.contains("scalebox_agent_image_cache_total{result=\"miss\"} 1\n"));
        assert!(t.contains("scalebox_agent_vmm_failures_total{kind=\"spawn\"} 1\n"));
        assert!(t.contains("scalebox_agent_instance_memory_bytes{instance=\"a\\\"b\"} 4096\n"));
        for l in t.lines() {
            assert!(l.starts_with('#') || l.split(' ').count() == 2, "{l}");
        }
    }
}
