//! The YAML configuration file: any text either resolves to a configuration or is refused with a
//! `ConfigError` naming the setting, never a panic.
#![no_main]

use std::sync::OnceLock;

use clap::Parser as _;
use pbflags_evaluator::app::config::ServeArgs;

#[derive(clap::Parser)]
struct Args {
    #[command(flatten)]
    serve: ServeArgs,
}

fn args() -> &'static ServeArgs {
    static ARGS: OnceLock<ServeArgs> = OnceLock::new();
    ARGS.get_or_init(|| {
        Args::try_parse_from(["fuzz"])
            .expect("no arguments parse")
            .serve
    })
}

libfuzzer_sys::fuzz_target!(
    // libFuzzer's hook aborts on every panic, even one the code under test contains on purpose
    // (descriptor parsing does); with the default hook, only a panic escaping the target crashes.
    init: {
        drop(std::panic::take_hook());
    },
    |data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    // Settings name files that resolution reads (TLS pairs, CA bundles); device and process files
    // (/dev/zero never ends) are not configuration the fuzzer should open.
    if ["/dev", "/proc", "/sys"].iter().any(|p| text.contains(p)) {
        return;
    }
    if let Err(e) = args().resolve_with_file_text(text) {
        assert!(!e.0.is_empty());
    }
});
