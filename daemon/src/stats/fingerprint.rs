//! Run comparability: the hashes that make up a run's measurement setup, the list of
//! differences between two setups, and the rule that refuses a comparison unless forced.

use serde::{Deserialize, Serialize};

use super::StatsError;

/// A judge as it took part in a run.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct JudgeIdentity {
    pub name: String,
    pub version: String,
    /// Hash of the plugin component and its configuration (incl. any judge model).
    pub hash: String,
}

/// Hashes of everything that defines what a run measured. Two runs are comparable when
/// everything but `engine_hash` matches.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunFingerprint {
    /// PromptGroup suite content (ids, texts, categories).
    pub suite_hash: String,
    /// The judges that scored the run (order does not matter).
    pub judges: Vec<JudgeIdentity>,
    /// Sampling settings: temperature, top-p/top-k, max tokens, K, seed scheme.
    pub sampling_hash: String,
    /// Chat template applied to the prompts.
    pub chat_template_hash: String,
    /// Engine settings (backend, threads, batch sizes). Informational: these change
    /// numerics, not the distribution being sampled, so a difference does not block.
    pub engine_hash: String,
    /// What generated, when it was not the embedded engine: the servers' software and
    /// version, the route (server template or driftwatch's) and the served names. Another
    /// sampler implementation samples another distribution, so a difference blocks (absent:
    /// the embedded engine).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backend_hash: Option<String>,
}

/// One field in which two fingerprints differ.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FingerprintDifference {
    pub field: String,
    pub left: String,
    pub right: String,
    /// Whether this difference makes the runs incomparable.
    pub blocking: bool,
}

/// The outcome of a comparability check attached to every comparison.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Comparability {
    pub differences: Vec<FingerprintDifference>,
    /// True when blocking differences existed and the comparison was forced.
    pub forced: bool,
}

/// Lists every difference between two fingerprints (judges compared by name: a judge
/// present in only one run, or with another version or hash, is a difference).
pub fn fingerprint_differences(a: &RunFingerprint, b: &RunFingerprint) -> Vec<FingerprintDifference> {
    let mut out = Vec::new();
    let mut field = |name: &str, l: &str, r: &str, blocking: bool| {
        if l != r {
            out.push(FingerprintDifference { field: name.into(), left: l.into(), right: r.into(), blocking });
        }
    };
    field("suite_hash", &a.suite_hash, &b.suite_hash, true);
    field("sampling_hash", &a.sampling_hash, &b.sampling_hash, true);
    field("chat_template_hash", &a.chat_template_hash, &b.chat_template_hash, true);
    field("engine_hash", &a.engine_hash, &b.engine_hash, false);
    let backend = |h: &Option<String>| h.clone().unwrap_or_else(|| "(embedded)".into());
    field("backend_hash", &backend(&a.backend_hash), &backend(&b.backend_hash), true);
    let mut ja = a.judges.clone();
    let mut jb = b.judges.clone();
    ja.sort();
    jb.sort();
    let show = |j: Option<&JudgeIdentity>| {
        j.map_or("(absent)".to_string(), |j| format!("{}@{}#{}", j.name, j.version, j.hash))
    };
    let mut names: Vec<&str> = ja.iter().chain(jb.iter()).map(|j| j.name.as_str()).collect();
    names.sort_unstable();
    names.dedup();
    for n in names {
        let l = ja.iter().find(|j| j.name == n);
        let r = jb.iter().find(|j| j.name == n);
        if l != r {
            field(&format!("judges.{n}"), &show(l), &show(r), true);
        }
    }
    out
}

/// Ok when the runs are comparable, or when `force` is set (then `forced` is true if
/// anything blocking differed); otherwise [`StatsError::NotComparable`].
pub fn check_comparable(a: &RunFingerprint, b: &RunFingerprint, force: bool) -> Result<Comparability, StatsError> {
    let differences = fingerprint_differences(a, b);
    let blocking = differences.iter().any(|d| d.blocking);
    if blocking && !force {
        return Err(StatsError::NotComparable(differences));
    }
    Ok(Comparability { differences, forced: blocking })
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn fp() -> RunFingerprint {
        RunFingerprint {
            suite_hash: "s1".into(),
            judges: vec![
                JudgeIdentity { name: "kw".into(), version: "0.1".into(), hash: "h1".into() },
                JudgeIdentity { name: "llm".into(), version: "0.2".into(), hash: "h2".into() },
            ],
            sampling_hash: "t1".into(),
            chat_template_hash: "c1".into(),
            engine_hash: "e1".into(),
            backend_hash: None,
        }
    }

    #[test]
    fn identical_fingerprints_compare() {
        let mut b = fp();
        b.judges.reverse();
        let c = check_comparable(&fp(), &b, false).unwrap();
        assert!(c.differences.is_empty() && !c.forced);
    }

    #[test]
    fn engine_difference_is_reported_but_not_blocking() {
        let mut b = fp();
        b.engine_hash = "e2".into();
        let c = check_comparable(&fp(), &b, false).unwrap();
        assert_eq!(c.differences.len(), 1);
        assert!(!c.differences[0].blocking && !c.forced);
    }

    #[test]
    fn a_remote_backend_never_compares_silently_with_the_embedded_engine() {
        let mut remote = fp();
        remote.backend_hash = Some("vllm-0.11".into());
        let d = fingerprint_differences(&fp(), &remote);
        assert_eq!(d.len(), 1);
        assert_eq!((d[0].field.as_str(), d[0].left.as_str(), d[0].blocking), ("backend_hash", "(embedded)", true));
        assert!(check_comparable(&fp(), &remote, false).is_err());
        let mut other = remote.clone();
        other.backend_hash = Some("llama.cpp-b6000".into());
        assert!(check_comparable(&remote, &other, false).is_err());
        assert!(check_comparable(&remote, &remote.clone(), false).unwrap().differences.is_empty());
        // Records written before the field existed read as the embedded engine.
        let old: RunFingerprint = serde_json::from_value(serde_json::json!({
            "suite_hash": "s1", "judges": fp().judges, "sampling_hash": "t1",
            "chat_template_hash": "c1", "engine_hash": "e1"}))
        .unwrap();
        assert_eq!(old, fp());
        assert!(serde_json::to_value(fp()).unwrap().get("backend_hash").is_none());
    }

    #[test]
    fn blocking_differences_refuse_unless_forced() {
        let mut b = fp();
        b.suite_hash = "s2".into();
        b.judges[1].version = "0.3".into();
        b.judges.push(JudgeIdentity { name: "new".into(), version: "1".into(), hash: "h3".into() });
        let d = fingerprint_differences(&fp(), &b);
        let fields: Vec<&str> = d.iter().map(|x| x.field.as_str()).collect();
        assert_eq!(fields, ["suite_hash", "judges.llm", "judges.new"]);
        assert_eq!(d[2].left, "(absent)");
        match check_comparable(&fp(), &b, false) {
            Err(StatsError::NotComparable(v)) => assert_eq!(v, d),
            other => panic!("expected refusal, got {other:?}"),
        }
        let forced = check_comparable(&fp(), &b, true).unwrap();
        assert!(forced.forced);
        assert_eq!(forced.differences, d);
    }
}
