//! Chat templates: the model's own (from its GGUF metadata) or a configured llama.cpp
//! built-in, applied to an optional system prompt and the user prompt.

use std::path::Path;

use llama_cpp_2::model::{LlamaChatMessage, LlamaChatTemplate, LlamaModel};

use super::{EngineError, ModelSpec};

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

/// A chat template as text (the configured built-in's name, or the model file's
/// `tokenizer.chat_template`), applied by llama.cpp exactly as the embedded engine applies it,
/// without loading the model: driftwatch's own template for `/v1/completions`, and the
/// testbed's training conversations.
pub(crate) struct TemplateText {
    text: std::ffi::CString,
}

impl TemplateText {
    /// The template a model spec asks for: its configured built-in, else its file's own.
    pub(crate) fn resolve(model: &ModelSpec) -> Result<TemplateText, EngineError> {
        if model.chat_template.is_none() && !model.model.is_file() {
            return Err(EngineError::InvalidRequest(format!(
                "{} is no model file to take a chat template from (a checkpoint known only by its served name?): set `model.chat_template`, or use engine.api = \"chat\"",
                model.model.display()
            )));
        }
        TemplateText::of_file(&model.model, model.chat_template.as_deref())
    }

    /// The configured built-in `configured`, else the template in the GGUF file at `path`.
    pub(crate) fn of_file(path: &Path, configured: Option<&str>) -> Result<TemplateText, EngineError> {
        let text = match configured {
            Some(name) => name.to_owned(),
            None => {
                let info = crate::gguf::inspect(path)
                    .map_err(|e| EngineError::Load { path: path.display().to_string(), reason: e.to_string() })?;
                info.chat_template()
                    .ok_or_else(|| EngineError::NoChatTemplate { model: path.display().to_string() })?
                    .to_owned()
            }
        };
        let text = std::ffi::CString::new(text)
            .map_err(|_| EngineError::Template("the chat template contains a NUL byte".into()))?;
        Ok(TemplateText { text })
    }

    /// The prompt text for one user message, ending with the assistant's turn opener.
    pub(crate) fn apply(&self, system: Option<&str>, user: &str) -> Result<String, EngineError> {
        let mut messages = Vec::with_capacity(2);
        if let Some(s) = system {
            messages.push(("system", s));
        }
        messages.push(("user", user));
        self.apply_messages(&messages, true)
    }

    /// The text of a whole conversation of `(role, content)` messages; with `add_assistant`,
    /// followed by the assistant's turn opener.
    pub(crate) fn apply_messages(&self, messages: &[(&str, &str)], add_assistant: bool) -> Result<String, EngineError> {
        use std::ffi::CString;
        let nul = |_| EngineError::Template("a prompt contains a NUL byte".into());
        let owned: Vec<(CString, CString)> = messages
            .iter()
            .map(|(r, c)| Ok((CString::new(*r).map_err(nul)?, CString::new(*c).map_err(nul)?)))
            .collect::<Result<_, EngineError>>()?;
        let chat: Vec<llama_cpp_sys_2::llama_chat_message> = owned
            .iter()
            .map(|(r, c)| llama_cpp_sys_2::llama_chat_message { role: r.as_ptr(), content: c.as_ptr() })
            .collect();
        let mut buf = vec![0u8; messages.iter().map(|(_, c)| c.len()).sum::<usize>() * 2 + 512];
        for _ in 0..2 {
            // SAFETY: the template, roles and contents are NUL-terminated and outlive the call;
            // `buf` is writable for its length, which is passed.
            let n = unsafe {
                llama_cpp_sys_2::llama_chat_apply_template(
                    self.text.as_ptr(),
                    chat.as_ptr(),
                    chat.len(),
                    add_assistant,
                    buf.as_mut_ptr().cast(),
                    i32::try_from(buf.len()).unwrap_or(i32::MAX),
                )
            };
            if n < 0 {
                return Err(EngineError::Template(
                    "llama.cpp does not recognise this chat template; set `model.chat_template` to a built-in name such as \"chatml\"".into(),
                ));
            }
            let n = n as usize;
            if n <= buf.len() {
                buf.truncate(n);
                return String::from_utf8(buf)
                    .map_err(|e| EngineError::Template(format!("the templated prompt is not UTF-8: {e}")));
            }
            buf.resize(n, 0);
        }
        Err(EngineError::Template("the templated prompt kept growing".into()))
    }
}
