//! Host bindings of the judge contract, one module per contract version the daemon serves:
//! [`v0_2`] from `sdk/wit/` (the current one) and [`v0_1`] from the frozen `daemon/wit/0.1.0/`,
//! so a plugin built against 0.1.0 keeps loading. [`Pre`] and [`Instance`] hide the version
//! from the rest of the host: a 0.1 plugin's batch result is seen as one verdict per sample,
//! and its role as undeclared.

use wasmtime::component::{HasSelf, Linker};
use wasmtime::Store;

use super::host::SandboxState;
use super::types::{JudgeInfo, Sample};

/// The current contract (`driftwatch:judge@0.2.0`).
pub(crate) mod v0_2 {
    wasmtime::component::bindgen!({
        world: "judge-plugin",
        path: "../sdk/wit",
    });
}

/// The first contract (`driftwatch:judge@0.1.0`): verdicts per batch, no declared role.
pub(crate) mod v0_1 {
    wasmtime::component::bindgen!({
        world: "judge-plugin",
        path: "wit/0.1.0",
    });
}

/// The current contract's types, as the host uses them.
pub(crate) use v0_2::driftwatch::judge::types as wit;

/// Which contract a component was built against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Contract {
    V0_1,
    V0_2,
}

/// The contract versions this daemon serves, newest (the current one) first.
pub const SUPPORTED_CONTRACTS: [&str; 2] = [Contract::V0_2.version(), Contract::V0_1.version()];

impl Contract {
    /// Every served contract, newest first.
    const SERVED: [Contract; 2] = [Contract::V0_2, Contract::V0_1];

    /// The WIT package version.
    pub const fn version(self) -> &'static str {
        match self {
            Contract::V0_1 => "0.1.0",
            Contract::V0_2 => "0.2.0",
        }
    }

    /// The contract a component's `driftwatch:judge/...` version string names, if served:
    /// for 0.x, the same minor version (semver: 0.x minor bumps are breaking), else the same
    /// major version.
    pub fn of(found: &str) -> Option<Contract> {
        let (major, minor, _) = parse_version(found)?;
        let same = |v: &str| parse_version(v).is_some_and(|(a, b, _)| a == major && (a != 0 || b == minor));
        Contract::SERVED.into_iter().find(|c| same(c.version()))
    }
}

/// Parses `X.Y.Z` (ignoring any pre-release suffix).
pub(crate) fn parse_version(v: &str) -> Option<(u64, u64, u64)> {
    let core = v.split(['-', '+']).next()?;
    let mut it = core.split('.').map(|p| p.parse::<u64>().ok());
    let v = (it.next()??, it.next()??, it.next()??);
    it.next().is_none().then_some(v)
}

/// Links the `driftwatch:judge/host` imports of every served version.
pub(crate) fn add_to_linker(linker: &mut Linker<SandboxState>) -> wasmtime::Result<()> {
    v0_2::JudgePlugin::add_to_linker::<SandboxState, HasSelf<SandboxState>>(linker, |s| s)?;
    v0_1::JudgePlugin::add_to_linker::<SandboxState, HasSelf<SandboxState>>(linker, |s| s)?;
    Ok(())
}

/// A compiled, linked component, ready to instantiate.
#[derive(Clone)]
pub(crate) enum Pre {
    V0_1(v0_1::JudgePluginPre<SandboxState>),
    V0_2(v0_2::JudgePluginPre<SandboxState>),
}

impl Pre {
    /// Checks the component's exports against its contract's world.
    pub fn new(contract: Contract, pre: wasmtime::component::InstancePre<SandboxState>) -> wasmtime::Result<Pre> {
        Ok(match contract {
            Contract::V0_1 => Pre::V0_1(v0_1::JudgePluginPre::new(pre)?),
            Contract::V0_2 => Pre::V0_2(v0_2::JudgePluginPre::new(pre)?),
        })
    }

    /// The contract the component was built against.
    pub fn contract(&self) -> Contract {
        match self {
            Pre::V0_1(_) => Contract::V0_1,
            Pre::V0_2(_) => Contract::V0_2,
        }
    }

    pub fn instantiate(&self, store: &mut Store<SandboxState>) -> wasmtime::Result<Instance> {
        Ok(match self {
            Pre::V0_1(p) => Instance::V0_1(p.instantiate(store)?),
            Pre::V0_2(p) => Instance::V0_2(p.instantiate(store)?),
        })
    }
}

/// One instance's exports, whatever its contract version.
pub(crate) enum Instance {
    V0_1(v0_1::JudgePlugin),
    V0_2(v0_2::JudgePlugin),
}

/// A batch's answer in the current contract's terms: per sample a verdict or an error, or an
/// error for the whole batch.
pub(crate) type BatchResult = Result<Vec<Result<wit::Verdict, wit::JudgeError>>, wit::JudgeError>;

impl Instance {
    /// The plugin's `info`; a 0.1 plugin's role is `None` (undeclared).
    pub fn info(&self, store: &mut Store<SandboxState>) -> wasmtime::Result<JudgeInfo> {
        match self {
            Instance::V0_2(b) => Ok(b.driftwatch_judge_judge().call_info(store)?.into()),
            Instance::V0_1(b) => {
                let i = b.driftwatch_judge_judge().call_info(store)?;
                Ok(JudgeInfo { name: i.name, version: i.version, measures: i.measures, role: None })
            }
        }
    }

    pub fn configure(&self, store: &mut Store<SandboxState>, config: &str) -> wasmtime::Result<Result<(), String>> {
        match self {
            Instance::V0_2(b) => b.driftwatch_judge_judge().call_configure(store, config),
            Instance::V0_1(b) => b.driftwatch_judge_judge().call_configure(store, config),
        }
    }

    /// Judges a batch. A 0.1 plugin's answer (one list of verdicts, or one error) is given
    /// as a verdict per sample or one error for the batch.
    pub fn judge(&self, store: &mut Store<SandboxState>, batch: &[Sample]) -> wasmtime::Result<BatchResult> {
        match self {
            Instance::V0_2(b) => {
                let batch: Vec<wit::Sample> = batch.iter().map(wit::Sample::from).collect();
                b.driftwatch_judge_judge().call_judge(store, &batch)
            }
            Instance::V0_1(b) => {
                let batch: Vec<old::Sample> = batch.iter().map(old_sample).collect();
                Ok(match b.driftwatch_judge_judge().call_judge(store, &batch)? {
                    Ok(verdicts) => Ok(verdicts.into_iter().map(|v| Ok(new_verdict(v))).collect()),
                    Err(e) => Err(new_error(e)),
                })
            }
        }
    }
}

use v0_1::driftwatch::judge::types as old;

fn old_sample(s: &Sample) -> old::Sample {
    let w = wit::Sample::from(s);
    old::Sample {
        prompt_id: w.prompt_id,
        category: w.category,
        prompt: w.prompt,
        response: w.response,
        sample_index: w.sample_index,
        seed: w.seed,
        finish_reason: match w.finish_reason {
            wit::FinishReason::Stop => old::FinishReason::Stop,
            wit::FinishReason::Length => old::FinishReason::Length,
            wit::FinishReason::Cancelled => old::FinishReason::Cancelled,
            wit::FinishReason::Error => old::FinishReason::Error,
        },
    }
}

fn new_verdict(v: old::Verdict) -> wit::Verdict {
    wit::Verdict { unsafe_: v.unsafe_, score: v.score, label: v.label, rationale: v.rationale, refusal: v.refusal }
}

fn new_error(e: old::JudgeError) -> wit::JudgeError {
    wit::JudgeError {
        kind: match e.kind {
            old::JudgeErrorKind::Config => wit::JudgeErrorKind::Config,
            old::JudgeErrorKind::Unjudgeable => wit::JudgeErrorKind::Unjudgeable,
            old::JudgeErrorKind::Model => wit::JudgeErrorKind::Model,
            old::JudgeErrorKind::Internal => wit::JudgeErrorKind::Internal,
        },
        message: e.message,
    }
}

/// A 0.1 plugin's host calls are the current ones: the same `generate` and `log`.
impl old::Host for SandboxState {}

impl v0_1::driftwatch::judge::host::Host for SandboxState {
    fn generate(&mut self, r: old::GenerateRequest) -> Result<String, String> {
        let request = wit::GenerateRequest {
            system: r.system,
            prompt: r.prompt,
            max_tokens: r.max_tokens,
            temperature: r.temperature,
            stop: r.stop,
        };
        v0_2::driftwatch::judge::host::Host::generate(self, request)
    }

    fn log(&mut self, level: old::LogLevel, message: String) {
        let level = match level {
            old::LogLevel::Trace => wit::LogLevel::Trace,
            old::LogLevel::Debug => wit::LogLevel::Debug,
            old::LogLevel::Info => wit::LogLevel::Info,
            old::LogLevel::Warn => wit::LogLevel::Warn,
            old::LogLevel::Error => wit::LogLevel::Error,
        };
        v0_2::driftwatch::judge::host::Host::log(self, level, message)
    }
}
