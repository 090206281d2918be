//! The plugin registry: loads every `.wasm` in a folder, reloads a new or changed file once
//! it has settled (without a restart), keeps the previous version serving when a new one is
//! broken, and reports [`PluginEvent`]s on a tokio broadcast channel.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::RwLock;
use tokio::sync::broadcast;

use super::error::RegistryError;
use super::host::{JudgePlugin, JudgeRuntime};
use super::settings::PluginSettings;
use super::JudgeModel;

/// What happened to a plugin file. The daemon forwards these as `plugin.loaded` /
/// `plugin.failed` events.
#[derive(Debug, Clone, PartialEq)]
pub enum PluginEvent {
    /// A plugin was loaded (or reloaded with new contents) and is serving.
    Loaded {
        /// Registry name (the file stem).
        name: String,
        /// The file it came from.
        path: PathBuf,
        /// sha256 of the component, hex.
        sha256: String,
        /// The plugin's own name and version from `info`.
        info_name: String,
        info_version: String,
        /// True when it replaced an earlier version.
        replaced: bool,
    },
    /// A plugin file could not be loaded; any previous version keeps serving.
    Failed {
        /// Registry name (the file stem).
        name: String,
        /// The file.
        path: PathBuf,
        /// Why it failed.
        error: String,
        /// True when an earlier version of this plugin is still serving.
        previous_kept: bool,
    },
    /// A plugin file was deleted; the plugin no longer serves.
    Removed {
        /// Registry name (the file stem).
        name: String,
        /// The file.
        path: PathBuf,
    },
}

/// How the registry finds, configures and watches plugins.
#[derive(Clone)]
pub struct RegistryConfig {
    /// Folder holding the `.wasm` plugins.
    pub dir: PathBuf,
    /// Settings per plugin name (file stem); plugins without an entry get `default_settings`.
    pub settings: HashMap<String, PluginSettings>,
    /// Settings for plugins that have no entry in `settings`.
    pub default_settings: PluginSettings,
    /// Judge model per plugin name.
    pub models: HashMap<String, Arc<dyn JudgeModel>>,
    /// How long a changed file must stay unchanged (size and mtime) before it is loaded.
    pub settle: Duration,
}

impl std::fmt::Debug for RegistryConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RegistryConfig")
            .field("dir", &self.dir)
            .field("settings", &self.settings)
            .field("models", &self.models.keys().collect::<Vec<_>>())
            .field("settle", &self.settle)
            .finish()
    }
}

impl RegistryConfig {
    /// A config for `dir` with default settings, no judge models and a 500 ms settle time.
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        RegistryConfig {
            dir: dir.into(),
            settings: HashMap::new(),
            default_settings: PluginSettings::default(),
            models: HashMap::new(),
            settle: Duration::from_millis(500),
        }
    }
}

struct Inner {
    runtime: Arc<JudgeRuntime>,
    config: RegistryConfig,
    plugins: RwLock<BTreeMap<String, Arc<JudgePlugin>>>,
    /// The content of each file that failed to load, so the same broken file is reported once.
    failed: RwLock<HashMap<String, [u8; 32]>>,
    events: broadcast::Sender<PluginEvent>,
}

/// Every judge plugin in the plugin folder, by name. Cheap to clone.
#[derive(Clone)]
pub struct PluginRegistry {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for PluginRegistry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PluginRegistry").field("dir", &self.inner.config.dir).field("plugins", &self.names()).finish()
    }
}

/// The plugin name of a path: its file stem, when it is a `.wasm` file.
fn plugin_name(path: &Path) -> Option<String> {
    (path.extension()? == "wasm").then(|| path.file_stem()?.to_str().map(str::to_owned))?
}

impl PluginRegistry {
    /// An empty registry; call [`PluginRegistry::scan`] to load the folder and
    /// [`PluginRegistry::watch`] to follow changes.
    pub fn new(runtime: Arc<JudgeRuntime>, config: RegistryConfig) -> Self {
        let (events, _) = broadcast::channel(256);
        PluginRegistry {
            inner: Arc::new(Inner {
                runtime,
                config,
                plugins: RwLock::new(BTreeMap::new()),
                failed: RwLock::new(HashMap::new()),
                events,
            }),
        }
    }

    /// Receives every later [`PluginEvent`].
    pub fn subscribe(&self) -> broadcast::Receiver<PluginEvent> {
        self.inner.events.subscribe()
    }

    /// The plugin called `name`, if loaded.
    pub fn get(&self, name: &str) -> Option<Arc<JudgePlugin>> {
        self.inner.plugins.read().get(name).cloned()
    }

    /// The file a plugin of this name is (or would be) loaded from.
    pub fn path_of(&self, name: &str) -> PathBuf {
        self.inner.config.dir.join(format!("{name}.wasm"))
    }

    /// Names of the loaded plugins, sorted.
    pub fn names(&self) -> Vec<String> {
        self.inner.plugins.read().keys().cloned().collect()
    }

    /// Loads every `.wasm` file in the folder; returns the events (also broadcast).
    pub fn scan(&self) -> Result<Vec<PluginEvent>, RegistryError> {
        let dir = &self.inner.config.dir;
        let read_err = |cause| RegistryError::ReadDir { path: dir.clone(), cause };
        let mut paths: Vec<PathBuf> = std::fs::read_dir(dir)
            .map_err(read_err)?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.is_file() && plugin_name(p).is_some())
            .collect();
        paths.sort();
        Ok(paths.iter().filter_map(|p| self.reload_path(p)).collect())
    }

    /// (Re)loads one plugin file, or unloads it when it was deleted. Returns the event, or
    /// `None` when nothing changed (not a `.wasm` file, or the same contents as loaded).
    pub fn reload_path(&self, path: &Path) -> Option<PluginEvent> {
        let name = plugin_name(path)?;
        let event = if !path.exists() {
            self.inner.failed.write().remove(&name);
            self.inner.plugins.write().remove(&name)?;
            PluginEvent::Removed { name, path: path.to_owned() }
        } else {
            self.load(name, path)?
        };
        match &event {
            PluginEvent::Loaded { name, sha256, .. } => tracing::info!(plugin = %name, %sha256, "judge plugin loaded"),
            PluginEvent::Failed { name, error, .. } => {
                tracing::warn!(plugin = %name, %error, "judge plugin failed to load")
            }
            PluginEvent::Removed { name, .. } => tracing::info!(plugin = %name, "judge plugin removed"),
        }
        let _ = self.inner.events.send(event.clone());
        Some(event)
    }

    fn load(&self, name: String, path: &Path) -> Option<PluginEvent> {
        let cfg = &self.inner.config;
        let previous = self.get(&name);
        let fail = |error: String| PluginEvent::Failed {
            name: name.clone(),
            path: path.to_owned(),
            error,
            previous_kept: previous.is_some(),
        };
        let bytes = match std::fs::read(path) {
            Ok(b) => b,
            Err(e) => return Some(fail(format!("cannot read {}: {e}", path.display()))),
        };
        let sha: [u8; 32] = sha2::Digest::finalize(<sha2::Sha256 as sha2::Digest>::new_with_prefix(&bytes)).into();
        if previous.as_ref().is_some_and(|p| p.sha256() == sha) || self.inner.failed.read().get(&name) == Some(&sha) {
            return None;
        }
        let settings = cfg.settings.get(&name).cloned().unwrap_or_else(|| cfg.default_settings.clone());
        let model = cfg.models.get(&name).cloned();
        match self.inner.runtime.load(&name, &bytes, settings, model) {
            Ok(plugin) => {
                let event = PluginEvent::Loaded {
                    name: name.clone(),
                    path: path.to_owned(),
                    sha256: plugin.sha256_hex(),
                    info_name: plugin.info().name.clone(),
                    info_version: plugin.info().version.clone(),
                    replaced: previous.is_some(),
                };
                self.inner.failed.write().remove(&name);
                self.inner.plugins.write().insert(name, Arc::new(plugin));
                Some(event)
            }
            Err(e) => {
                self.inner.failed.write().insert(name.clone(), sha);
                Some(fail(e.to_string()))
            }
        }
    }

    /// Watches the folder and (re)loads plugin files once they settle. Dropping the
    /// returned watcher stops watching.
    pub fn watch(&self) -> Result<RegistryWatcher, RegistryError> {
        use crate::watch::{WatchEvent, WatchOptions, Watcher};
        let dir = self.inner.config.dir.clone();
        let watch_err = |message: String| RegistryError::Watch { path: dir.clone(), message };
        let mut options = WatchOptions::new(self.inner.config.settle);
        options.extension = "wasm";
        let (watcher, mut rx) =
            Watcher::start_blocking(std::slice::from_ref(&dir), options, tokio_util::sync::CancellationToken::new())
                .map_err(|e| watch_err(e.to_string()))?;
        // The watcher takes subfolders too; a plugin is a file directly in the folder.
        let folder = watcher.folders().first().cloned().unwrap_or_else(|| dir.clone());
        let registry = self.clone();
        let worker = std::thread::Builder::new()
            .name("judge-plugin-watch".into())
            .spawn(move || {
                while let Some(event) = rx.blocking_recv() {
                    match event {
                        WatchEvent::Settled(f) if f.path.parent() == Some(folder.as_path()) => {
                            registry.reload_path(&f.path);
                        }
                        WatchEvent::Removed(path) if path.parent() == Some(folder.as_path()) => {
                            registry.reload_path(&path);
                        }
                        WatchEvent::Error(e) => tracing::warn!(error = %e, "plugins folder"),
                        _ => {}
                    }
                }
            })
            .map_err(|e| watch_err(e.to_string()))?;
        Ok(RegistryWatcher { _watcher: watcher, _worker: worker })
    }
}

/// Keeps the registry's folder watched while alive.
pub struct RegistryWatcher {
    _watcher: crate::watch::Watcher,
    _worker: std::thread::JoinHandle<()>,
}

impl std::fmt::Debug for RegistryWatcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RegistryWatcher")
    }
}
