//! Chat templates: a conversation of `role`/`content` messages rendered to the text a model
//! continues.

use serde_json::{json, Value};

use crate::error::{ModelError, Result};

/// A chat template (Jinja, rendered with minijinja): the model file's, or a config's for a
/// server's `completions` api.
pub struct ChatTemplate {
    env: minijinja::Environment<'static>,
}

impl ChatTemplate {
    pub fn new(source: &str) -> Result<ChatTemplate> {
        let mut env = minijinja::Environment::new();
        env.add_template_owned("chat", source.to_string())
            .map_err(|source| ModelError::Template {
                what: "does not parse",
                source,
            })?;
        Ok(ChatTemplate { env })
    }

    /// Renders one user message with the generation prompt.
    pub fn render(&self, prompt: &str) -> Result<String> {
        self.render_messages(&[json!({"role": "user", "content": prompt})])
    }

    /// Renders a conversation (`role`/`content` objects) with the generation prompt added.
    pub fn render_messages(&self, messages: &[Value]) -> Result<String> {
        self.render_conversation(messages, true)
    }

    /// Renders a conversation, with or without the generation prompt.
    pub(crate) fn render_conversation(
        &self,
        messages: &[Value],
        add_generation_prompt: bool,
    ) -> Result<String> {
        self.env
            .get_template("chat")
            .and_then(|t| t.render(minijinja::context! { messages, add_generation_prompt }))
            .map_err(|source| ModelError::Template {
                what: "failed to render",
                source,
            })
    }
}
