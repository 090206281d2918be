//! The plugin registry: folder scan, hot reload of new and changed components after they
//! settle, a broken update keeping the previous version serving, removal, and events.

use std::time::Duration;

use driftwatch::judge::{JudgeRuntime, PluginEvent, PluginRegistry, RegistryConfig};
use driftwatch_tests::{hostile, sample};
use tokio::sync::broadcast;

fn next_event(rx: &mut broadcast::Receiver<PluginEvent>) -> PluginEvent {
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        match rx.try_recv() {
            Ok(e) => return e,
            Err(broadcast::error::TryRecvError::Empty) if std::time::Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(20))
            }
            Err(e) => panic!("no plugin event: {e:?}"),
        }
    }
}

#[test]
fn judge_registry_scans_and_hot_reloads() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(hostile("good"), dir.path().join("alpha.wasm")).unwrap();
    std::fs::write(dir.path().join("broken.wasm"), b"\0asm garbage").unwrap();
    std::fs::write(dir.path().join("notes.txt"), b"ignored").unwrap();
    let mut config = RegistryConfig::new(dir.path());
    config.settle = Duration::from_millis(200);
    let registry = PluginRegistry::new(JudgeRuntime::shared().unwrap(), config);

    let events = registry.scan().unwrap();
    assert_eq!(events.len(), 2, "{events:?}");
    assert!(
        matches!(&events[0], PluginEvent::Loaded { name, info_name, replaced: false, .. } if name == "alpha" && info_name == "good")
    );
    assert!(matches!(&events[1], PluginEvent::Failed { name, previous_kept: false, .. } if name == "broken"));
    assert_eq!(registry.names(), ["alpha"]);

    let mut rx = registry.subscribe();
    let _watcher = registry.watch().unwrap();

    // A broken update: reported, and the previous version keeps serving.
    std::fs::write(dir.path().join("alpha.wasm"), b"not a component").unwrap();
    match next_event(&mut rx) {
        PluginEvent::Failed { name, previous_kept: true, error, .. } => {
            assert_eq!(name, "alpha");
            assert!(error.contains("component"), "{error}");
        }
        other => panic!("expected Failed, got {other:?}"),
    }
    let v = registry.get("alpha").unwrap().judge(&[sample("x", "UNSAFE")]).unwrap();
    assert!(v[0].is_unsafe);

    // A changed file with a different plugin replaces it without a restart.
    std::fs::copy(hostile("short"), dir.path().join("alpha.wasm")).unwrap();
    match next_event(&mut rx) {
        PluginEvent::Loaded { name, info_name, replaced: true, .. } => {
            assert_eq!((name.as_str(), info_name.as_str()), ("alpha", "short"))
        }
        other => panic!("expected Loaded, got {other:?}"),
    }
    assert_eq!(registry.get("alpha").unwrap().info().name, "short");

    // A new file is picked up.
    std::fs::copy(hostile("good"), dir.path().join("beta.wasm")).unwrap();
    match next_event(&mut rx) {
        PluginEvent::Loaded { name, replaced: false, .. } => assert_eq!(name, "beta"),
        other => panic!("expected Loaded, got {other:?}"),
    }
    // A deleted file is unloaded.
    std::fs::remove_file(dir.path().join("beta.wasm")).unwrap();
    match next_event(&mut rx) {
        PluginEvent::Removed { name, .. } => assert_eq!(name, "beta"),
        other => panic!("expected Removed, got {other:?}"),
    }
    assert_eq!(registry.names(), ["alpha"]);
}
