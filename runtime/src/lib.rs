//! What the evaluator and the operator share at run time: background loops that stop on
//! cancellation ([`periodic`]), their supervision ([`supervise`]) and the Prometheus text exposition ([`render_metrics`]).

pub mod periodic;
pub mod supervise;

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
}
