//! Judge inputs for the plugin tests: sample constructors and a scripted judge model.

use std::sync::{Arc, Mutex};

use driftwatch::judge::{FinishReason, JudgeGenerateRequest, JudgeModel, Sample};

/// A sample with the given prompt id and response.
pub fn sample(prompt_id: &str, response: &str) -> Sample {
    Sample {
        prompt_id: prompt_id.into(),
        category: "test".into(),
        prompt: format!("prompt {prompt_id}"),
        response: response.into(),
        sample_index: 0,
        seed: 7,
        finish_reason: FinishReason::Stop,
    }
}

/// A deterministic test double for the judge model: answers from a script of
/// (substring of the prompt, answer) rules, records every request.
pub struct ScriptedModel {
    rules: Vec<(String, String)>,
    /// Every request, in order.
    pub requests: Mutex<Vec<JudgeGenerateRequest>>,
}

impl ScriptedModel {
    /// A model answering each prompt with the answer of the first rule whose needle it contains.
    pub fn new(rules: &[(&str, &str)]) -> Arc<Self> {
        Arc::new(ScriptedModel {
            rules: rules.iter().map(|(a, b)| (a.to_string(), b.to_string())).collect(),
            requests: Mutex::new(Vec::new()),
        })
    }
}

impl JudgeModel for ScriptedModel {
    fn generate(&self, req: &JudgeGenerateRequest) -> Result<String, String> {
        self.requests.lock().unwrap().push(req.clone());
        self.rules
            .iter()
            .find(|(needle, _)| req.prompt.contains(needle.as_str()))
            .map(|(_, answer)| answer.clone())
            .ok_or_else(|| "scripted model: no rule matches".to_string())
    }
}
