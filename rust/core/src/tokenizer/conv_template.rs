//! MLC LLM's own conversation templates (`conv_template` in `mlc-chat-config.json`), rendered as MLC
//! renders them.
//!
//! MLC models carry no Jinja template: the prompt format is MLC's `Conversation` object
//! (`python/mlc_llm/protocol/conversation_protocol.py`), either embedded in full or, in legacy configs,
//! named from MLC's registry ([`ConvTemplate::builtin`]). A chat request becomes a prompt the way MLC's
//! `engine_base.process_chat_completion_request` does it: a leading system message replaces the
//! template's `system_message`, the other messages are appended to the template's own history, and a
//! final `("assistant", None)` asks for the generation prompt; `Conversation.as_prompt` then joins
//! them. `system_prefix_token_ids` (usually BOS) stay token ids, as in MLC, so BOS is never
//! re-tokenized from text.

use serde::de::DeserializeOwned;
use serde::ser::{Serialize, SerializeMap, Serializer};
use serde_json::{Map, Value};

use super::conv_template_builtin::{BuiltinSpec, BUILTINS};
use crate::error::{EngineError, Result};

const SYSTEM_PLACEHOLDER: &str = "{system_message}";
const FUNCTION_PLACEHOLDER: &str = "{function_string}";
const THINK_END: &str = "</think>";

/// A string map that keeps its keys in the order MLC wrote them (Python dicts are ordered), so that
/// [`ConvTemplate::to_json`] reproduces MLC's object and error messages list roles as MLC would.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct RoleMap(Vec<(String, String)>);

impl RoleMap {
    pub fn get(&self, key: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    pub fn keys(&self) -> impl Iterator<Item = &str> {
        self.0.iter().map(|(k, _)| k.as_str())
    }

    /// Sets `key`, keeping its position if it was already there (Python's `dict.update`).
    pub fn insert(&mut self, key: &str, value: &str) {
        match self.0.iter_mut().find(|(k, _)| k == key) {
            Some(entry) => entry.1 = value.to_string(),
            None => self.0.push((key.to_string(), value.to_string())),
        }
    }
}

impl Serialize for RoleMap {
    fn serialize<S: Serializer>(&self, serializer: S) -> std::result::Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(Some(self.0.len()))?;
        for (k, v) in &self.0 {
            map.serialize_entry(k, v)?;
        }
        map.end()
    }
}

/// MLC's `Conversation`: field names, meanings and defaults are MLC's, so the JSON object in an
/// `mlc-chat-config.json` maps onto it one to one.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct ConvTemplate {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// The system prompt, with `{system_message}` standing for [`Self::system_message`].
    pub system_template: String,
    /// The default system message; a request's own system message replaces it.
    pub system_message: String,
    /// Token ids put before the rendered text (kept as ids, never tokenized from text).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub system_prefix_token_ids: Option<Vec<u32>>,
    /// When false and a system prompt is present, the first message goes without its role prefix
    /// (the `[INST] <<SYS>>…` formats, where the system prompt already opened the user turn).
    pub add_role_after_system_message: bool,
    /// The text that opens each role's turn, keyed by OpenAI role (`user`, `assistant`, `tool`).
    pub roles: RoleMap,
    /// Per role, the message text with `{user_message}` etc. standing for the content.
    pub role_templates: RoleMap,
    /// Conversation history that comes with the template, before the request's messages.
    pub messages: Vec<(String, Option<Value>)>,
    /// One separator after every message, or two: `seps[0]` after non-assistant messages and
    /// `seps[1]` after assistant messages.
    pub seps: Vec<String>,
    pub role_content_sep: String,
    /// What follows a role with no content, i.e. the generation prompt's tail.
    pub role_empty_sep: String,
    pub stop_str: Vec<String>,
    pub stop_token_ids: Vec<u32>,
    /// Replaces the last `{function_string}` in the prompt (the tools, when a request uses them).
    pub function_string: String,
    pub use_function_calling: bool,
    /// Drop `<think>…</think>` reasoning from assistant turns before the last user message.
    pub strip_reasoning_in_history: bool,
}

/// A rendered prompt: `prefix_token_ids` go first as ids, then the tokens of `text`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RenderedPrompt {
    pub prefix_token_ids: Vec<u32>,
    pub text: String,
}

/// A message's content as MLC handles it: a string, a list of text parts, or none (a bare role).
#[derive(Debug, Clone, PartialEq)]
enum Content {
    Text(String),
    Parts(Vec<String>),
    Empty,
}

#[derive(Debug, Clone, PartialEq)]
struct Turn {
    role: String,
    content: Content,
}

impl ConvTemplate {
    /// The `conv_template` value of an `mlc-chat-config.json`: a full object, or a registry name.
    pub fn from_config_value(v: &Value) -> Result<ConvTemplate> {
        match v {
            Value::String(name) => ConvTemplate::builtin(name).ok_or_else(|| {
                EngineError::Template(format!(
                    "unknown conversation template \"{name}\"; known templates: {}",
                    builtin_names().join(", ")
                ))
            }),
            Value::Object(object) => parse_object(object),
            other => Err(EngineError::Template(format!(
                "conv_template must be a template name or an object, not {}",
                json_kind(other)
            ))),
        }
    }

    /// The template MLC's registry holds under `name`.
    pub fn builtin(name: &str) -> Option<ConvTemplate> {
        BUILTINS.iter().find(|s| s.name == name).map(from_spec)
    }

    /// Same as the module's [`builtin_names`].
    pub fn builtin_names() -> Vec<&'static str> {
        builtin_names()
    }

    pub fn stop_strs(&self) -> &[String] {
        &self.stop_str
    }

    pub fn stop_token_ids(&self) -> &[u32] {
        &self.stop_token_ids
    }

    /// The object as MLC writes it into `mlc-chat-config.json` (`model_dump(exclude_none=True)`).
    pub fn to_json(&self) -> Value {
        serde_json::to_value(self).unwrap_or(Value::Null)
    }

    /// Renders an OpenAI `messages` array (roles system/developer/user/assistant/tool; content a
    /// string, a list of text parts, or null). `add_generation_prompt` appends the assistant's
    /// opening (`roles["assistant"] + role_empty_sep`), which MLC always does for chat requests.
    pub fn render(&self, messages: &Value, add_generation_prompt: bool) -> Result<RenderedPrompt> {
        let (system_message, mut turns) = self.collect_turns(messages)?;
        if add_generation_prompt {
            turns.push(Turn {
                role: "assistant".into(),
                content: Content::Empty,
            });
        }
        if self.strip_reasoning_in_history {
            strip_reasoning(&mut turns);
        }
        let text = self.as_prompt(&system_message, &turns)?;
        Ok(RenderedPrompt {
            prefix_token_ids: self.system_prefix_token_ids.clone().unwrap_or_default(),
            text,
        })
    }

    /// The template's own history followed by the request's messages, and the system message in
    /// effect. Mirrors MLC's request checks: a system message only at position 0.
    fn collect_turns(&self, messages: &Value) -> Result<(String, Vec<Turn>)> {
        let list = messages.as_array().ok_or_else(|| {
            EngineError::bad_request("messages", "must be a list of message objects")
        })?;
        let mut system_message = self.system_message.clone();
        let mut turns = Vec::with_capacity(self.messages.len() + list.len() + 1);
        for (i, (role, content)) in self.messages.iter().enumerate() {
            let content = parse_content(content.as_ref(), &format!("conv_template.messages[{i}]"))
                .map_err(|e| EngineError::Template(e.to_string()))?;
            turns.push(Turn {
                role: role.clone(),
                content,
            });
        }
        for (i, message) in list.iter().enumerate() {
            let field = format!("messages[{i}]");
            let object = message
                .as_object()
                .ok_or_else(|| EngineError::bad_request(&field, "must be an object"))?;
            let role = match object.get("role").and_then(Value::as_str) {
                Some("developer") => "system",
                Some(role) => role,
                None => return Err(EngineError::bad_request(&field, "needs a string \"role\"")),
            };
            let content = parse_content(object.get("content"), &format!("{field}.content"))?;
            if role == "system" {
                if i != 0 {
                    return Err(EngineError::bad_request(
                        "messages",
                        format!("System prompt at position {i} in the message list is invalid."),
                    ));
                }
                system_message = match content {
                    Content::Text(text) => text,
                    Content::Parts(parts) => parts.concat(),
                    Content::Empty => String::new(),
                };
                continue;
            }
            check_no_tool_calls(object, &field)?;
            turns.push(Turn {
                role: role.to_string(),
                content,
            });
        }
        Ok((system_message, turns))
    }

    /// MLC's `Conversation.as_prompt` for text-only conversations.
    fn as_prompt(&self, system_message: &str, turns: &[Turn]) -> Result<String> {
        let system = self
            .system_template
            .replace(SYSTEM_PLACEHOLDER, system_message);
        let user_sep = self.seps.first().map(String::as_str).unwrap_or_default();
        let assistant_sep = self.seps.get(1).map(String::as_str).unwrap_or(user_sep);
        let mut prompt = system.clone();
        for (i, turn) in turns.iter().enumerate() {
            let role_text = self
                .roles
                .get(&turn.role)
                .ok_or_else(|| self.unsupported_role(&turn.role))?;
            let separator = if turn.role == "assistant" {
                assistant_sep
            } else {
                user_sep
            };
            if turn.content == Content::Empty {
                prompt.push_str(role_text);
                prompt.push_str(&self.role_empty_sep);
                continue;
            }
            // The system prompt already opened the first turn in `[INST] <<SYS>>` style formats.
            if self.add_role_after_system_message || system.is_empty() || i != 0 {
                prompt.push_str(role_text);
                prompt.push_str(&self.role_content_sep);
            }
            let template = self.role_templates.get(&turn.role).ok_or_else(|| {
                EngineError::Template(format!(
                    "role_templates has no entry for role \"{}\"",
                    turn.role
                ))
            })?;
            let placeholder = format!("{{{}_message}}", turn.role);
            match &turn.content {
                Content::Text(text) => prompt.push_str(&template.replace(&placeholder, text)),
                Content::Parts(parts) => {
                    for part in parts {
                        prompt.push_str(&template.replace(&placeholder, part));
                    }
                }
                Content::Empty => {}
            }
            prompt.push_str(separator);
        }
        Ok(self.fill_function_string(prompt))
    }

    /// The last `{function_string}` becomes the function string and any others vanish, in that
    /// order, as MLC does on the finished prompt.
    fn fill_function_string(&self, prompt: String) -> String {
        let filled = match prompt.rfind(FUNCTION_PLACEHOLDER) {
            Some(at) => {
                let after = &prompt[at + FUNCTION_PLACEHOLDER.len()..];
                format!("{}{}{}", &prompt[..at], self.function_string, after)
            }
            None => prompt,
        };
        filled.replace(FUNCTION_PLACEHOLDER, "")
    }

    fn unsupported_role(&self, role: &str) -> EngineError {
        let known: Vec<String> = self.roles.keys().map(|k| format!("\"{k}\"")).collect();
        EngineError::bad_request(
            "messages",
            format!(
                "Role \"{role}\" is not a supported role in [{}] (conversation template {})",
                known.join(", "),
                self.name.as_deref().unwrap_or("without a name")
            ),
        )
    }
}

/// Names of the templates [`ConvTemplate::builtin`] knows, in registry order.
pub fn builtin_names() -> Vec<&'static str> {
    BUILTINS.iter().map(|s| s.name).collect()
}

/// MLC's `Conversation.__init__` merges the given role templates over these.
fn default_role_templates() -> RoleMap {
    RoleMap(vec![
        ("user".into(), "{user_message}".into()),
        ("assistant".into(), "{assistant_message}".into()),
        ("tool".into(), "{tool_message}".into()),
    ])
}

fn from_spec(spec: &BuiltinSpec) -> ConvTemplate {
    let strings = |items: &[&str]| items.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    ConvTemplate {
        name: Some(spec.name.to_string()),
        system_template: spec.system_template.to_string(),
        system_message: spec.system_message.to_string(),
        system_prefix_token_ids: spec.system_prefix_token_ids.map(<[u32]>::to_vec),
        add_role_after_system_message: spec.add_role_after_system_message,
        roles: RoleMap(
            spec.roles
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        ),
        role_templates: default_role_templates(),
        messages: Vec::new(),
        seps: strings(spec.seps),
        role_content_sep: spec.role_content_sep.to_string(),
        role_empty_sep: spec.role_empty_sep.to_string(),
        stop_str: strings(spec.stop_str),
        stop_token_ids: spec.stop_token_ids.to_vec(),
        function_string: String::new(),
        use_function_calling: false,
        strip_reasoning_in_history: spec.strip_reasoning_in_history,
    }
}

/// Parses MLC's JSON object field by field, so that a wrong type names its field. Unknown fields
/// are ignored (pydantic's default); `roles` and `seps` are required, as in MLC.
fn parse_object(object: &Map<String, Value>) -> Result<ConvTemplate> {
    let mut role_templates = default_role_templates();
    if let Some(given) = string_map(object, "role_templates")? {
        for (k, v) in &given.0 {
            role_templates.insert(k, v);
        }
    }
    let seps: Vec<String> = required(object, "seps")?;
    if seps.is_empty() || seps.len() > 2 {
        return Err(EngineError::Template(format!(
            "conv_template.seps: should have size 1 or 2, got {}",
            seps.len()
        )));
    }
    let roles = string_map(object, "roles")?
        .ok_or_else(|| EngineError::Template("conv_template.roles: field required".into()))?;
    Ok(ConvTemplate {
        name: field::<Option<String>>(object, "name")?.flatten(),
        system_template: field(object, "system_template")?
            .unwrap_or_else(|| SYSTEM_PLACEHOLDER.into()),
        system_message: field(object, "system_message")?.unwrap_or_default(),
        system_prefix_token_ids: field::<Option<Vec<u32>>>(object, "system_prefix_token_ids")?
            .flatten(),
        add_role_after_system_message: field(object, "add_role_after_system_message")?
            .unwrap_or(true),
        roles,
        role_templates,
        messages: field(object, "messages")?.unwrap_or_default(),
        seps,
        role_content_sep: field(object, "role_content_sep")?.unwrap_or_default(),
        role_empty_sep: field(object, "role_empty_sep")?.unwrap_or_default(),
        stop_str: field(object, "stop_str")?.unwrap_or_default(),
        stop_token_ids: field(object, "stop_token_ids")?.unwrap_or_default(),
        function_string: field(object, "function_string")?.unwrap_or_default(),
        use_function_calling: field(object, "use_function_calling")?.unwrap_or(false),
        strip_reasoning_in_history: field(object, "strip_reasoning_in_history")?.unwrap_or(false),
    })
}

/// `object[name]` as a `T`; `None` when absent. A value of the wrong type is an error naming the field.
fn field<T: DeserializeOwned>(object: &Map<String, Value>, name: &str) -> Result<Option<T>> {
    object
        .get(name)
        .map(|v| {
            T::deserialize(v)
                .map_err(|e| EngineError::Template(format!("conv_template.{name}: {e}")))
        })
        .transpose()
}

fn required<T: DeserializeOwned>(object: &Map<String, Value>, name: &str) -> Result<T> {
    field(object, name)?
        .ok_or_else(|| EngineError::Template(format!("conv_template.{name}: field required")))
}

/// A JSON object of strings, in document order.
fn string_map(object: &Map<String, Value>, name: &str) -> Result<Option<RoleMap>> {
    let Some(value) = object.get(name) else {
        return Ok(None);
    };
    let entries = value.as_object().ok_or_else(|| {
        EngineError::Template(format!(
            "conv_template.{name}: expected an object, got {}",
            json_kind(value)
        ))
    })?;
    let mut map = RoleMap::default();
    for (key, v) in entries {
        let text = v.as_str().ok_or_else(|| {
            EngineError::Template(format!(
                "conv_template.{name}.{key}: expected a string, got {}",
                json_kind(v)
            ))
        })?;
        map.insert(key, text);
    }
    Ok(Some(map))
}

/// A message's `content`: a string, null/absent, or a list of `{"type": "text", "text": …}` parts
/// (other part types, such as images, have no text form here).
fn parse_content(content: Option<&Value>, field: &str) -> Result<Content> {
    match content {
        None | Some(Value::Null) => Ok(Content::Empty),
        Some(Value::String(text)) => Ok(Content::Text(text.clone())),
        Some(Value::Array(parts)) => parts
            .iter()
            .map(|part| {
                let kind = part.get("type").and_then(Value::as_str);
                match (kind, part.get("text").and_then(Value::as_str)) {
                    (Some("text"), Some(text)) => Ok(text.to_string()),
                    _ => Err(EngineError::bad_request(
                        field,
                        format!(
                            "Unsupported content type: {}; only text parts are supported",
                            kind.unwrap_or("(none)")
                        ),
                    )),
                }
            })
            .collect::<Result<Vec<_>>>()
            .map(Content::Parts),
        Some(other) => Err(EngineError::bad_request(
            field,
            format!(
                "must be a string or a list of parts, not {}",
                json_kind(other)
            ),
        )),
    }
}

/// MLC refuses assistant `tool_calls` in the history ("not supported yet"): its templates have no
/// form for them, and dropping them silently would show the model a conversation that never happened.
fn check_no_tool_calls(object: &Map<String, Value>, field: &str) -> Result<()> {
    match object.get("tool_calls") {
        None | Some(Value::Null) => Ok(()),
        Some(Value::Array(calls)) if calls.is_empty() => Ok(()),
        Some(_) => Err(EngineError::bad_request(
            format!("{field}.tool_calls"),
            "messages with tool_calls cannot be rendered by an MLC conversation template",
        )),
    }
}

/// Qwen3's convention: reasoning of earlier turns is not shown again. Assistant turns before the
/// last user message keep only what follows their last `</think>`, without its leading newlines.
fn strip_reasoning(turns: &mut [Turn]) {
    let Some(last_user) = turns.iter().rposition(|t| t.role == "user") else {
        return;
    };
    let strip = |text: &mut String| {
        if let Some(at) = text.rfind(THINK_END) {
            *text = text[at + THINK_END.len()..]
                .trim_start_matches('\n')
                .to_string();
        }
    };
    for turn in turns[..last_user]
        .iter_mut()
        .filter(|t| t.role == "assistant")
    {
        match &mut turn.content {
            Content::Text(text) => strip(text),
            Content::Parts(parts) => parts.iter_mut().for_each(strip),
            Content::Empty => {}
        }
    }
}

fn json_kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "an object",
    }
}
