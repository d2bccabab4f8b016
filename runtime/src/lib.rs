//! What the evaluator and the operator share at run time: background loops that stop on
//! cancellation ([`periodic`]), their supervision ([`supervise`]) and the Prometheus text exposition ([`render_metrics`]).

pub mod periodic;
pub mod supervise;

/// The version the binaries are built as.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
/// The git commit they are built from (12 hex digits), or `unknown`.
pub const GIT_SHA: &str = env!("PBFLAGS_GIT_SHA");

/// A `<name>{version, git_sha} 1` gauge in `registry`: which build runs, for dashboards and alerts
/// on mixed versions.
pub fn register_build_info(registry: &prometheus::Registry, name: &str) {
    let opts = prometheus::Opts::new(name, "The running build: version and git commit (value 1).")
        .const_label("version", VERSION)
        .const_label("git_sha", GIT_SHA);
    // A fixed, valid name registered once per registry: neither step can fail.
    if let Ok(gauge) = prometheus::IntGauge::with_opts(opts) {
        gauge.set(1);
        let _ = registry.register(Box::new(gauge));
    }
}

/// The Prometheus text exposition of every metric family in `registry`.
pub fn render_metrics(registry: &prometheus::Registry) -> String {
    use prometheus::Encoder as _;
    let mut buf = Vec::new();
    // Encoding well-formed families into a Vec cannot fail; a family that somehow does is left out
    // rather than failing the scrape.
    let _ = prometheus::TextEncoder::new().encode(&registry.gather(), &mut buf);
    String::from_utf8(buf).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    #[test]
    fn renders_registered_families_in_the_text_format() {
        let registry = prometheus::Registry::new();
        let c = prometheus::IntCounter::new("pbflags_test_total", "A test counter.")
            .expect("valid metric");
        registry.register(Box::new(c.clone())).expect("register");
        c.inc_by(3);
        let text = super::render_metrics(&registry);
        assert!(
            text.contains("# HELP pbflags_test_total A test counter."),
            "{text}"
        );
        assert!(text.contains("# TYPE pbflags_test_total counter"), "{text}");
        assert!(text.contains("\npbflags_test_total 3\n"), "{text}");
    }

    #[test]
    fn build_info_names_the_version_and_commit() {
        let registry = prometheus::Registry::new();
        super::register_build_info(&registry, "pbflags_test_build_info");
        let text = super::render_metrics(&registry);
        let line = text
            .lines()
            .find(|l| l.starts_with("pbflags_test_build_info{"))
            .unwrap_or_default();
        assert!(
            line.contains(&format!("version=\"{}\"", super::VERSION)),
            "{text}"
        );
        assert!(line.ends_with(" 1"), "{line}");
        // Built from this repository's checkout: a commit, not `unknown`.
        assert!(
            super::GIT_SHA.len() == 12 && super::GIT_SHA.chars().all(|c| c.is_ascii_hexdigit()),
            "{}",
            super::GIT_SHA
        );
        assert!(line.contains(&format!("git_sha=\"{}\"", super::GIT_SHA)));
    }
}
