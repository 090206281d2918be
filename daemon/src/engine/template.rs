//! Chat templates: the model's own (from its GGUF metadata) or a configured llama.cpp
//! built-in, applied to an optional system prompt and the user prompt.

use llama_cpp_2::model::{LlamaChatMessage, LlamaChatTemplate, LlamaModel};

use super::EngineError;

/// A resolved template and how to describe it in provenance.
pub(crate) struct Template {
    tmpl: LlamaChatTemplate,
    /// The template's text, or the built-in name it was configured by.
    pub description: String,
}

/// Picks the template: the configured override, else the model's own, else an error.
pub(crate) fn resolve(model: &LlamaModel, model_path: &str, configured: Option<&str>) -> Result<Template, EngineError> {
    if let Some(name) = configured {
        let tmpl = LlamaChatTemplate::new(name).map_err(|e| EngineError::Template(e.to_string()))?;
        return Ok(Template { tmpl, description: name.to_owned() });
    }
    match model.chat_template(None) {
        Ok(tmpl) => {
            let description = tmpl.to_string().unwrap_or_default();
            Ok(Template { tmpl, description })
        }
        Err(_) => Err(EngineError::NoChatTemplate { model: model_path.to_owned() }),
    }
}

impl Template {
    /// The prompt text for one user message, ending with the assistant's turn opener.
    pub(crate) fn apply(&self, model: &LlamaModel, system: Option<&str>, user: &str) -> Result<String, EngineError> {
        let msg = |role: &str, content: &str| {
            LlamaChatMessage::new(role.to_owned(), content.to_owned())
                .map_err(|e| EngineError::Template(format!("a prompt contains a NUL byte: {e}")))
        };
        let mut chat = Vec::with_capacity(2);
        if let Some(s) = system {
            chat.push(msg("system", s)?);
        }
        chat.push(msg("user", user)?);
        model.apply_chat_template(&self.tmpl, &chat, true).map_err(|e| {
            EngineError::Template(format!(
                "llama.cpp does not recognise this chat template ({e}); set `model.chat_template` to a built-in name such as \"chatml\""
            ))
        })
    }
}
