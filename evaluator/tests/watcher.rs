//! Descriptor hot reload, including the kubelet's ConfigMap update sequence.

mod support;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use pbflags_evaluator::core::registry::{Registry, Snapshot};
use pbflags_evaluator::metrics::Metrics;
use pbflags_evaluator::reload::descriptors::{
    DescriptorWatcher, ReloadError, ReloadOutcome, Trigger, WatcherConfig,
};
use tokio_util::sync::CancellationToken;

/// A directory laid out and updated the way the kubelet's atomic writer does it for a ConfigMap
/// volume: `<key> -> ..data/<key>`, `..data -> ..<timestamp>`, and an update writes a new
/// timestamped directory, points `..data_tmp` at it, renames `..data_tmp` over `..data`, and
/// removes the old directory.
struct ConfigMapVolume {
    root: tempfile::TempDir,
    generation: u32,
}

impl ConfigMapVolume {
    const KEY: &'static str = "descriptors.pb";

    fn new(content: &[u8]) -> Self {
        let mut v = Self {
            root: tempfile::tempdir().expect("tempdir"),
            generation: 0,
        };
        v.update(content);
        std::os::unix::fs::symlink(
            format!("..data/{}", Self::KEY),
            v.root.path().join(Self::KEY),
        )
        .expect("key symlink");
        v
    }

    fn path(&self) -> PathBuf {
        self.root.path().join(Self::KEY)
    }

    fn update(&mut self, content: &[u8]) {
        let root = self.root.path();
        let old = std::fs::read_link(root.join("..data")).ok();
        self.generation += 1;
        let ts = format!(
            "..2026_11_27_08_00_{:02}.{:09}",
            self.generation,
            123_456_789 + self.generation
        );
        std::fs::create_dir(root.join(&ts)).expect("timestamped dir");
        std::fs::write(root.join(&ts).join(Self::KEY), content).expect("payload");
        std::os::unix::fs::symlink(&ts, root.join("..data_tmp")).expect("..data_tmp");
        std::fs::rename(root.join("..data_tmp"), root.join("..data")).expect("rename over ..data");
        if let Some(old) = old {
            std::fs::remove_dir_all(root.join(old)).expect("remove old generation");
        }
    }
}

fn setup(path: &Path) -> (Arc<Registry>, Metrics, DescriptorWatcher, WatcherConfig) {
    let registry = Arc::new(Registry::new(
        Snapshot::from_bytes(pbflags_proto::EXAMPLE_DESCRIPTORS).expect("example"),
    ));
    let metrics = Metrics::new();
    let mut config = WatcherConfig::new(path);
    config.poll_interval = Duration::from_secs(3600);
    config.sighup = false;
    let watcher = DescriptorWatcher::new(config.clone(), registry.clone(), metrics.clone());
    (registry, metrics, watcher, config)
}

async fn wait_for(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn configmap_symlink_swap_is_seen_by_the_directory_watch() {
    let mut volume = ConfigMapVolume::new(pbflags_proto::EXAMPLE_DESCRIPTORS);
    let (registry, metrics, watcher, _) = setup(&volume.path());
    let shutdown = CancellationToken::new();
    let task = Arc::new(watcher).spawn(shutdown.clone());

    let next = support::many_flags("cm", 5);
    volume.update(&next);
    wait_for("reload after ..data swap", || registry.load().len() == 5).await;
    assert_eq!(
        registry.load().hash(),
        pbflags_evaluator::core::registry::ContentHash::of(&next)
    );
    assert_eq!(metrics.reloads(true), 1);
    assert!(
        metrics
            .render()
            .contains(&format!("sha256=\"{}\"", registry.load().hash()))
    );

    shutdown.cancel();
    tokio::time::timeout(Duration::from_secs(5), task)
        .await
        .expect("stops")
        .expect("no panic");
}

#[tokio::test]
async fn a_burst_of_updates_settles_on_the_last_content() {
    let mut volume = ConfigMapVolume::new(pbflags_proto::EXAMPLE_DESCRIPTORS);
    let (registry, _metrics, watcher, _) = setup(&volume.path());
    let shutdown = CancellationToken::new();
    let _task = Arc::new(watcher).spawn(shutdown.clone());
    for n in 1..=5 {
        volume.update(&support::many_flags("burst", n));
    }
    wait_for("last content of the burst", || registry.load().len() == 5).await;
    shutdown.cancel();
}

#[tokio::test]
async fn polling_alone_notices_a_changed_hash() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("d.pb");
    std::fs::write(&path, pbflags_proto::EXAMPLE_DESCRIPTORS).expect("write");
    let (registry, metrics, _, mut config) = setup(&path);
    config.fs_events = false;
    config.poll_interval = Duration::from_millis(50);
    let watcher = DescriptorWatcher::new(config, registry.clone(), metrics);
    let shutdown = CancellationToken::new();
    let _task = Arc::new(watcher).spawn(shutdown.clone());
    std::fs::write(&path, support::many_flags("polled", 2)).expect("write");
    wait_for("poll reload", || registry.load().len() == 2).await;
    shutdown.cancel();
}

#[tokio::test]
async fn sighup_reloads() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("d.pb");
    std::fs::write(&path, pbflags_proto::EXAMPLE_DESCRIPTORS).expect("write");
    let (registry, metrics, _, mut config) = setup(&path);
    config.fs_events = false;
    config.sighup = true;
    let watcher = DescriptorWatcher::new(config, registry.clone(), metrics);
    let shutdown = CancellationToken::new();
    let _task = Arc::new(watcher).spawn(shutdown.clone());
    std::fs::write(&path, support::many_flags("hup", 3)).expect("write");
    let status = std::process::Command::new("kill")
        .args(["-HUP", &std::process::id().to_string()])
        .status()
        .expect("kill");
    assert!(status.success());
    wait_for("SIGHUP reload", || registry.load().len() == 3).await;
    shutdown.cancel();
}

#[test]
fn corrupt_file_keeps_the_old_snapshot_and_is_counted_once() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("d.pb");
    let (registry, metrics, watcher, _) = setup(&path);
    let before = registry.load().hash();
    std::fs::write(&path, b"\xff\xfe garbage").expect("write");
    assert!(matches!(
        watcher.reload(Trigger::Manual),
        ReloadOutcome::Failed(ReloadError::Parse { .. })
    ));
    assert_eq!(registry.load().hash(), before);
    assert_eq!(registry.load().len(), 4);
    assert_eq!(metrics.reloads(false), 1);
    // The same bad bytes are not retried (or re-logged) until they change.
    assert!(matches!(
        watcher.reload(Trigger::Poll),
        ReloadOutcome::Unchanged
    ));
    assert_eq!(metrics.reloads(false), 1);
}

#[test]
fn missing_file_keeps_the_old_snapshot() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (registry, metrics, watcher, _) = setup(&dir.path().join("absent.pb"));
    match watcher.reload(Trigger::Manual) {
        ReloadOutcome::Failed(e @ ReloadError::Read { .. }) => {
            assert!(e.to_string().contains("absent.pb"), "{e}")
        }
        other => panic!("expected a read failure, got {other:?}"),
    }
    assert_eq!(registry.load().len(), 4);
    assert_eq!(metrics.reloads(false), 1);
}

#[test]
fn empty_file_keeps_the_old_snapshot() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("d.pb");
    std::fs::write(&path, b"").expect("write");
    let (registry, _metrics, watcher, _) = setup(&path);
    match watcher.reload(Trigger::Manual) {
        ReloadOutcome::Failed(e) => assert!(e.to_string().contains("empty"), "{e}"),
        other => panic!("expected failure, got {other:?}"),
    }
    assert_eq!(registry.load().len(), 4);
}

#[test]
fn a_valid_file_after_a_bad_one_is_loaded() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("d.pb");
    let (registry, metrics, watcher, _) = setup(&path);
    std::fs::write(&path, b"garbage").expect("write");
    assert!(matches!(
        watcher.reload(Trigger::Manual),
        ReloadOutcome::Failed(_)
    ));
    std::fs::write(&path, support::many_flags("fixed", 7)).expect("write");
    match watcher.reload(Trigger::Manual) {
        ReloadOutcome::Reloaded { diff, .. } => {
            assert_eq!(diff.added.len(), 7);
            assert_eq!(diff.removed.len(), 4);
        }
        other => panic!("expected reload, got {other:?}"),
    }
    assert_eq!(registry.load().len(), 7);
    assert_eq!((metrics.reloads(true), metrics.reloads(false)), (1, 1));
}

#[test]
fn identical_content_is_not_reloaded() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("d.pb");
    std::fs::write(&path, pbflags_proto::EXAMPLE_DESCRIPTORS).expect("write");
    let (_registry, metrics, watcher, _) = setup(&path);
    assert!(matches!(
        watcher.reload(Trigger::Signal),
        ReloadOutcome::Unchanged
    ));
    assert_eq!(metrics.reloads(true) + metrics.reloads(false), 0);
}

/// `EXAMPLE_DESCRIPTORS` cut right after the `pbflags/options.proto` entry: a valid set that
/// declares no flags (what a slow or interrupted writer leaves behind).
fn truncated_after_options_proto() -> Vec<u8> {
    use prost::Message as _;
    let set = prost_types::FileDescriptorSet::decode(pbflags_proto::EXAMPLE_DESCRIPTORS)
        .expect("example set");
    let at = set
        .file
        .iter()
        .position(|f| f.name() == "pbflags/options.proto")
        .expect("the example carries options.proto");
    let cut = prost_types::FileDescriptorSet {
        file: set.file[..=at].to_vec(),
    }
    .encode_to_vec();
    assert!(
        pbflags_proto::EXAMPLE_DESCRIPTORS.starts_with(&cut)
            && cut.len() < pbflags_proto::EXAMPLE_DESCRIPTORS.len(),
        "a byte prefix of the real file"
    );
    assert_eq!(Snapshot::from_bytes(&cut).expect("still loads").len(), 0);
    cut
}

#[test]
fn a_truncated_file_without_flags_never_replaces_a_set_with_flags() {
    let mut volume = ConfigMapVolume::new(pbflags_proto::EXAMPLE_DESCRIPTORS);
    let (registry, metrics, watcher, _) = setup(&volume.path());
    let before = registry.load().hash();
    volume.update(&truncated_after_options_proto());
    match watcher.reload(Trigger::FileEvent) {
        ReloadOutcome::Failed(e @ ReloadError::Empty { serving: 4, .. }) => {
            assert!(e.to_string().contains("--allow-empty-descriptors"), "{e}");
        }
        other => panic!("expected the empty set to be refused, got {other:?}"),
    }
    assert_eq!((registry.load().hash(), registry.load().len()), (before, 4));
    assert_eq!(metrics.reloads(false), 1);
    // The same content is not retried until it changes; the whole file then loads.
    assert!(matches!(
        watcher.reload(Trigger::Poll),
        ReloadOutcome::Unchanged
    ));
    volume.update(&support::many_flags("whole", 3));
    assert!(matches!(
        watcher.reload(Trigger::FileEvent),
        ReloadOutcome::Reloaded { .. }
    ));
    assert_eq!(registry.load().len(), 3);
}

#[test]
fn an_empty_set_replaces_the_serving_one_only_when_allowed() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("d.pb");
    std::fs::write(&path, truncated_after_options_proto()).expect("write");
    let (registry, metrics, _, mut config) = setup(&path);
    config.allow_empty = true;
    let watcher = DescriptorWatcher::new(config, registry.clone(), metrics.clone());
    assert!(matches!(
        watcher.reload(Trigger::Manual),
        ReloadOutcome::Reloaded { .. }
    ));
    assert_eq!(registry.load().len(), 0);
    assert_eq!(metrics.reloads(true), 1);
}

#[test]
fn a_file_caught_half_written_in_place_is_read_again_and_the_whole_file_applied() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("d.pb");
    std::fs::write(&path, pbflags_proto::EXAMPLE_DESCRIPTORS).expect("write");
    let (registry, metrics, _, mut config) = setup(&path);
    config.debounce = Duration::from_millis(1000);
    let watcher = DescriptorWatcher::new(config, registry.clone(), metrics.clone());
    // A slow writer: the new set's first part (exactly the truncation after options.proto, a
    // valid set with no flags), then the rest a moment later, in place.
    let whole = support::many_flags("slow", 5);
    let cut = truncated_after_options_proto();
    std::fs::write(&path, &cut).expect("first part");
    let writer = {
        let (path, whole) = (path.clone(), whole.clone());
        std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(50));
            std::fs::write(&path, &whole).expect("the rest");
        })
    };
    let outcome = watcher.reload(Trigger::FileEvent);
    writer.join().expect("writer");
    match outcome {
        ReloadOutcome::Reloaded { hash, .. } => {
            assert_eq!(hash, registry.load().hash());
        }
        other => panic!("expected the whole file to load, got {other:?}"),
    }
    assert_eq!(registry.load().len(), 5);
    assert_eq!((metrics.reloads(true), metrics.reloads(false)), (1, 0));
}

#[test]
fn a_file_that_keeps_changing_is_not_applied_and_is_retried() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("d.pb");
    std::fs::write(&path, pbflags_proto::EXAMPLE_DESCRIPTORS).expect("write");
    let (registry, metrics, _, mut config) = setup(&path);
    config.debounce = Duration::from_millis(1000);
    let watcher = DescriptorWatcher::new(config, registry.clone(), metrics.clone());
    let before = registry.load().hash();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    // A different valid set every few milliseconds until told to stop (the first one before the
    // reload starts): one set of flags, made unique by a trailing unknown field (number 15, the
    // write's sequence number), which parsing ignores.
    let base = support::many_flags("busy", 2);
    let numbered = move |n: u64| {
        use prost::Message as _;
        let mut b = base.clone();
        prost::encoding::encode_key(15, prost::encoding::WireType::Varint, &mut b);
        prost::encoding::encode_varint(n, &mut b);
        let _ = prost_types::FileDescriptorSet::decode(&*b).expect("still a descriptor set");
        b
    };
    std::fs::write(&path, numbered(0)).expect("write");
    let writer = {
        let (path, stop) = (path.clone(), stop.clone());
        std::thread::spawn(move || {
            for n in 1.. {
                if stop.load(std::sync::atomic::Ordering::SeqCst) {
                    break;
                }
                // Replaced whole (write and rename), so every read sees one complete set.
                let tmp = path.with_extension("tmp");
                std::fs::write(&tmp, numbered(n)).expect("write");
                std::fs::rename(&tmp, &path).expect("rename");
                std::thread::sleep(Duration::from_millis(3));
            }
        })
    };
    let outcome = watcher.reload(Trigger::FileEvent);
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    writer.join().expect("writer");
    match outcome {
        ReloadOutcome::Failed(e @ ReloadError::Unsettled { .. }) => {
            assert!(e.to_string().contains("kept changing"), "{e}");
        }
        other => panic!("expected a file that never settles to be refused, got {other:?}"),
    }
    assert_eq!(registry.load().hash(), before);
    // Once the writer is done, the next trigger applies the final content.
    assert!(matches!(
        watcher.reload(Trigger::Poll),
        ReloadOutcome::Reloaded { .. }
    ));
}

/// The log lines `f` writes at WARN and above, as text.
fn warnings_of(f: impl FnOnce()) -> String {
    #[derive(Clone, Default)]
    struct Buf(Arc<std::sync::Mutex<Vec<u8>>>);
    impl std::io::Write for Buf {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().expect("lock").extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let buf = Buf::default();
    let writer = buf.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::WARN)
        .with_ansi(false)
        .with_writer(move || writer.clone())
        .finish();
    tracing::subscriber::with_default(subscriber, f);
    String::from_utf8(buf.0.lock().expect("lock").clone()).expect("utf-8")
}

#[test]
fn a_reload_that_removes_most_flags_warns_with_the_count() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("d.pb");
    std::fs::write(&path, support::many_flags("big", 10)).expect("write");
    let (registry, metrics, _, mut config) = setup(&path);
    config.debounce = Duration::from_millis(10);
    let watcher = DescriptorWatcher::new(config, registry.clone(), metrics);
    // The example set (4 flags) → 10 flags of another feature: 4 of 4 removed.
    let logs = warnings_of(|| {
        assert!(matches!(
            watcher.reload(Trigger::Manual),
            ReloadOutcome::Reloaded { .. }
        ));
    });
    assert!(logs.contains("remove most of the serving flags"), "{logs}");
    assert!(
        logs.contains("removed=4") && logs.contains("serving_before=4"),
        "{logs}"
    );
    // 10 → 9 flags of the same feature: one removed, no warning.
    std::fs::write(&path, support::many_flags("big", 9)).expect("write");
    let logs = warnings_of(|| {
        assert!(matches!(
            watcher.reload(Trigger::Manual),
            ReloadOutcome::Reloaded { .. }
        ));
    });
    assert!(logs.is_empty(), "{logs}");
    assert_eq!(registry.load().len(), 9);
}
