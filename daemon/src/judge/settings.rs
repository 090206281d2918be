//! Per-plugin settings from the daemon config: sandbox limits, batch size, plugin config.

use serde::Deserialize;

use super::error::SettingsError;

/// Settings for one judge plugin (a `[judges.<name>]` table in the daemon config).
///
/// ```toml
/// timeout_ms = 10000          # wall-clock deadline of one call into the plugin
/// memory_mb = 256             # cap on the plugin's linear memory
/// max_generate_tokens = 256   # cap on max_tokens of the plugin's judge-model requests
/// batch_size = 64             # samples per call
/// [config]                    # handed to the plugin's `configure` as TOML text
/// threshold = 4
/// ```
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PluginSettings {
    /// Wall-clock deadline of one call into the plugin, in milliseconds. Time the plugin
    /// spends waiting for its judge model is not counted.
    #[serde(default = "defaults::timeout_ms")]
    pub timeout_ms: u64,
    /// Cap on the plugin's linear memory, in MiB.
    #[serde(default = "defaults::memory_mb")]
    pub memory_mb: u64,
    /// Cap on the `max_tokens` of one judge-model request.
    #[serde(default = "defaults::max_generate_tokens")]
    pub max_generate_tokens: u32,
    /// Number of samples passed to one `judge` call.
    #[serde(default = "defaults::batch_size")]
    pub batch_size: usize,
    /// The plugin's own configuration, passed to its `configure` export as TOML text.
    #[serde(default)]
    pub config: toml::Table,
}

mod defaults {
    pub fn timeout_ms() -> u64 {
        10_000
    }
    pub fn memory_mb() -> u64 {
        256
    }
    pub fn max_generate_tokens() -> u32 {
        256
    }
    pub fn batch_size() -> usize {
        64
    }
}

impl Default for PluginSettings {
    fn default() -> Self {
        PluginSettings {
            timeout_ms: defaults::timeout_ms(),
            memory_mb: defaults::memory_mb(),
            max_generate_tokens: defaults::max_generate_tokens(),
            batch_size: defaults::batch_size(),
            config: toml::Table::new(),
        }
    }
}

impl PluginSettings {
    /// Parses settings from TOML text and validates them.
    pub fn from_toml(text: &str) -> Result<Self, SettingsError> {
        let s: PluginSettings = toml::from_str(text).map_err(|e| SettingsError::Parse(e.to_string()))?;
        s.validate()?;
        Ok(s)
    }

    /// Checks that every limit is usable.
    pub fn validate(&self) -> Result<(), SettingsError> {
        let bad = |field: &'static str, reason: &str| Err(SettingsError::Invalid { field, reason: reason.to_owned() });
        if self.timeout_ms == 0 || self.timeout_ms > 3_600_000 {
            return bad("timeout_ms", "must be between 1 and 3600000");
        }
        if self.memory_mb < 2 || self.memory_mb > 4096 {
            return bad("memory_mb", "must be between 2 and 4096");
        }
        if self.max_generate_tokens == 0 || self.max_generate_tokens > 32_768 {
            return bad("max_generate_tokens", "must be between 1 and 32768");
        }
        if self.batch_size == 0 || self.batch_size > 65_536 {
            return bad("batch_size", "must be between 1 and 65536");
        }
        Ok(())
    }

    /// The plugin config table as the TOML text handed to `configure`.
    pub fn config_text(&self) -> String {
        toml::to_string(&self.config).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn judge_settings_defaults_and_plugin_table() {
        let s = PluginSettings::from_toml("timeout_ms = 50\n[config]\nthreshold = 4\n").unwrap();
        assert_eq!(s.timeout_ms, 50);
        assert_eq!(s.memory_mb, 256);
        assert_eq!(s.max_generate_tokens, 256);
        assert_eq!(s.batch_size, 64);
        assert_eq!(s.config_text().trim(), "threshold = 4");
    }

    #[test]
    fn judge_settings_reject_unknown_and_bad_values() {
        let e = PluginSettings::from_toml("timeout = 5").unwrap_err();
        assert!(e.to_string().contains("unknown field"), "{e}");
        let e = PluginSettings::from_toml("batch_size = 0").unwrap_err();
        assert!(e.to_string().contains("batch_size"), "{e}");
        let e = PluginSettings::from_toml("memory_mb = 1").unwrap_err();
        assert!(e.to_string().contains("memory_mb"), "{e}");
    }
}
