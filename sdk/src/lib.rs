//! driftwatch-sdk: what a judge author uses to write a driftwatch judge plugin.
//!
//! A judge plugin is a small Rust crate compiled to a WebAssembly component
//! (`cargo build --target wasm32-wasip2 --release`). The daemon loads it in a sandbox and
//! calls it with batches of model responses; the plugin returns one [`Verdict`] per
//! [`Sample`], or that sample's own [`JudgeError`]. The contract is the WIT package
//! `driftwatch:judge@0.2.0` in this crate's `wit/` folder ([`CONTRACT_VERSION`]).
//!
//! A judge declares its [`JudgeRole`] in its [`JudgeInfo`]: [`JudgeRole::Harm`] (the default
//! of [`JudgeInfo::new`]) or [`JudgeRole::Coherence`] ([`JudgeInfo::with_role`]).
//!
//! Implement [`Judge`] (only [`Judge::info`] and [`Judge::judge_one`] are required) and
//! call [`export_judge!`] once:
//!
//! ```
//! use driftwatch_sdk::{export_judge, host, Judge, JudgeError, JudgeInfo, Sample, Verdict};
//!
//! /// Flags responses that mention a forbidden word from the config.
//! #[derive(Default)]
//! struct WordJudge {
//!     word: String,
//! }
//!
//! impl Judge for WordJudge {
//!     fn info() -> JudgeInfo {
//!         JudgeInfo::new("word", "0.1.0", "whether the response contains a configured word")
//!     }
//!
//!     fn configure(&mut self, config: &str) -> Result<(), String> {
//!         // The config is the plugin's TOML table from the daemon config, e.g. `word = "bomb"`.
//!         let word = config
//!             .lines()
//!             .find_map(|l| l.trim().strip_prefix("word = "))
//!             .unwrap_or("\"bomb\"");
//!         self.word = word.trim_matches('"').to_lowercase();
//!         Ok(())
//!     }
//!
//!     fn judge_one(&mut self, sample: &Sample) -> Result<Verdict, JudgeError> {
//!         let hit = sample.response.to_lowercase().contains(&self.word);
//!         if hit {
//!             host::log(host::LogLevel::Debug, &format!("{} mentions the word", sample.prompt_id));
//!         }
//!         Ok(Verdict::new(hit, if hit { "mentions" } else { "clean" }).with_score(hit as u8 as f64))
//!     }
//! }
//!
//! export_judge!(WordJudge);
//! # fn main() {}
//! ```
//!
//! What a plugin may do: compute, allocate memory up to the limit the daemon sets, call
//! [`host::generate`] (the judge model the daemon config assigns to the plugin, if any) and
//! [`host::log`]. Everything else a WASI program could reach is denied by the host: no
//! files, no environment, no network, clocks frozen at zero, randomness deterministic.
//! Each call has a wall-clock deadline; a panic, a trap or an overrun fails that batch only
//! (every sample of it is recorded as errored, never as safe).
//!
//! A panic inside the plugin is reported to the host (its message travels through
//! [`host::log`] at error level before the trap) so the daemon can show it.

extern crate self as driftwatch_sdk;

use std::cell::RefCell;

/// The contract version this SDK implements (the WIT package version).
pub const CONTRACT_VERSION: &str = "0.2.0";

#[doc(hidden)]
pub use wit_bindgen as __wit_bindgen;

/// Generated bindings. Not part of the public API; use the re-exports at the crate root.
#[doc(hidden)]
pub mod bindings {
    wit_bindgen::generate!({
        path: "wit",
        world: "judge-plugin",
        pub_export_macro: true,
        export_macro_name: "__export_judge_plugin_world",
        default_bindings_module: "driftwatch_sdk::bindings",
        runtime_path: "driftwatch_sdk::__wit_bindgen::rt",
    });
}

pub use bindings::driftwatch::judge::types::{
    FinishReason, JudgeError, JudgeErrorKind, JudgeInfo, JudgeRole, Sample, Verdict,
};

/// The capabilities the daemon grants: the judge model and the log.
pub mod host {
    pub use crate::bindings::driftwatch::judge::types::{GenerateRequest, LogLevel};

    /// Asks the judge model that the daemon config assigns to this plugin to generate text.
    ///
    /// Returns the host's error message when no model is configured for the plugin, the
    /// request is invalid, or generation failed.
    pub fn generate(request: &GenerateRequest) -> Result<String, String> {
        crate::bindings::driftwatch::judge::host::generate(request)
    }

    /// Greedy generation of at most `max_tokens` tokens from `prompt`, with an optional
    /// system prompt and no stop strings.
    pub fn generate_greedy(
        system: Option<&str>,
        prompt: &str,
        max_tokens: u32,
    ) -> Result<String, String> {
        generate(&GenerateRequest {
            system: system.map(str::to_owned),
            prompt: prompt.to_owned(),
            max_tokens,
            temperature: None,
            stop: Vec::new(),
        })
    }

    /// Writes a message to the daemon's log (the host bounds its length and rate).
    pub fn log(level: LogLevel, message: &str) {
        crate::bindings::driftwatch::judge::host::log(level, message)
    }
}

impl JudgeInfo {
    /// Describes a harm judge: its name, its version and what it measures.
    pub fn new(name: &str, version: &str, measures: &str) -> Self {
        JudgeInfo {
            name: name.to_owned(),
            version: version.to_owned(),
            measures: measures.to_owned(),
            role: JudgeRole::Harm,
        }
    }

    /// Declares what the judge's verdicts measure.
    pub fn with_role(mut self, role: JudgeRole) -> Self {
        self.role = role;
        self
    }
}

impl Verdict {
    /// A verdict with the given decision and label and no score, rationale or refusal flag.
    pub fn new(is_unsafe: bool, label: impl Into<String>) -> Self {
        Verdict { unsafe_: is_unsafe, score: None, label: label.into(), rationale: None, refusal: None }
    }

    /// Sets the numeric score (must be finite, or the host rejects the batch).
    pub fn with_score(mut self, score: f64) -> Self {
        self.score = Some(score);
        self
    }

    /// Sets the rationale.
    pub fn with_rationale(mut self, rationale: impl Into<String>) -> Self {
        self.rationale = Some(rationale.into());
        self
    }

    /// Sets whether the response is a refusal.
    pub fn with_refusal(mut self, refusal: bool) -> Self {
        self.refusal = Some(refusal);
        self
    }

    /// Whether the verdict says "unsafe".
    pub fn is_unsafe(&self) -> bool {
        self.unsafe_
    }
}

impl JudgeError {
    /// A failure of the given kind with a message.
    pub fn new(kind: JudgeErrorKind, message: impl Into<String>) -> Self {
        JudgeError { kind, message: message.into() }
    }

    /// A sample could not be judged (for example an unparseable judge-model answer).
    pub fn unjudgeable(message: impl Into<String>) -> Self {
        Self::new(JudgeErrorKind::Unjudgeable, message)
    }

    /// The judge model failed.
    pub fn model(message: impl Into<String>) -> Self {
        Self::new(JudgeErrorKind::Model, message)
    }
}

impl std::fmt::Display for JudgeErrorKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            JudgeErrorKind::Config => "config",
            JudgeErrorKind::Unjudgeable => "unjudgeable",
            JudgeErrorKind::Model => "model",
            JudgeErrorKind::Internal => "internal",
        })
    }
}

/// A judge. Implement [`Judge::info`] and [`Judge::judge_one`]; the rest has defaults.
///
/// The plugin value is created with [`Default`] when the component is instantiated, then
/// [`Judge::configure`] is called once with the plugin's config table, then
/// [`Judge::judge_batch`] for every batch. The daemon may re-instantiate the plugin (for
/// example after a trap), so keep no state that matters across batches.
pub trait Judge: Default + 'static {
    /// Name, version and what the judge measures.
    fn info() -> JudgeInfo;

    /// Receives the plugin's own config table from the daemon config as TOML text
    /// (empty when there is none). The default accepts anything.
    fn configure(&mut self, config: &str) -> Result<(), String> {
        let _ = config;
        Ok(())
    }

    /// Judges one sample.
    fn judge_one(&mut self, sample: &Sample) -> Result<Verdict, JudgeError>;

    /// Judges a batch; must return one result per sample, in order: a verdict, or that
    /// sample's own error (the others keep theirs). The outer error fails the whole batch;
    /// keep it for a failure of the whole call. The default maps [`Judge::judge_one`] over
    /// the batch, each sample with its own result.
    fn judge_batch(&mut self, batch: &[Sample]) -> Result<Vec<Result<Verdict, JudgeError>>, JudgeError> {
        Ok(batch.iter().map(|s| self.judge_one(s)).collect())
    }
}

/// Exports a [`Judge`] implementation as the plugin's component exports.
///
/// Call it exactly once, at the top level of the plugin crate: `export_judge!(MyJudge);`.
#[macro_export]
macro_rules! export_judge {
    ($judge:ty) => {
        #[doc(hidden)]
        struct __DriftwatchJudgeExport;

        #[doc(hidden)]
        impl $crate::bindings::exports::driftwatch::judge::judge::Guest for __DriftwatchJudgeExport {
            fn info() -> $crate::JudgeInfo {
                $crate::__private::info::<$judge>()
            }
            fn configure(config: ::std::string::String) -> ::std::result::Result<(), ::std::string::String> {
                $crate::__private::configure::<$judge>(&config)
            }
            fn judge(
                batch: ::std::vec::Vec<$crate::Sample>,
            ) -> ::std::result::Result<
                ::std::vec::Vec<::std::result::Result<$crate::Verdict, $crate::JudgeError>>,
                $crate::JudgeError,
            > {
                $crate::__private::judge::<$judge>(&batch)
            }
        }

        // Component exports exist only on wasm; natively (unit tests of a plugin's logic)
        // the crate still builds.
        #[cfg(target_arch = "wasm32")]
        $crate::bindings::__export_judge_plugin_world!(__DriftwatchJudgeExport with_types_in $crate::bindings);
    };
}

/// Glue used by [`export_judge!`]; not public API.
#[doc(hidden)]
pub mod __private {
    use super::*;
    use std::any::Any;

    thread_local! {
        // The plugin value (components are single-threaded; one value per instance).
        static STATE: RefCell<Option<Box<dyn Any>>> = const { RefCell::new(None) };
    }

    fn with_judge<J: Judge, R>(f: impl FnOnce(&mut J) -> R) -> R {
        STATE.with(|cell| {
            let mut slot = cell.borrow_mut();
            if slot.is_none() {
                install_panic_hook();
                *slot = Some(Box::new(J::default()));
            }
            let judge = slot
                .as_mut()
                .and_then(|b| b.downcast_mut::<J>())
                .expect("export_judge! was used with more than one type");
            f(judge)
        })
    }

    fn install_panic_hook() {
        std::panic::set_hook(Box::new(|info| {
            host::log(host::LogLevel::Error, &format!("plugin panicked: {info}"));
        }));
    }

    pub fn info<J: Judge>() -> JudgeInfo {
        J::info()
    }

    pub fn configure<J: Judge>(config: &str) -> Result<(), String> {
        with_judge::<J, _>(|j| j.configure(config))
    }

    pub fn judge<J: Judge>(batch: &[Sample]) -> Result<Vec<Result<Verdict, JudgeError>>, JudgeError> {
        with_judge::<J, _>(|j| j.judge_batch(batch))
    }
}
