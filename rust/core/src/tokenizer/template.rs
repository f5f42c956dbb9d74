//! Jinja chat templates (from `tokenizer_config.json` or GGUF `tokenizer.chat_template`), rendered with
//! minijinja so that the prompt is byte-identical to what HF transformers' `apply_chat_template` builds
//! with Python jinja2: a model only answers well to the exact bytes it was fine-tuned on.
//!
//! Parity with HF comes from the environment: trim_blocks + lstrip_blocks, the pycompat string/dict
//! methods (`.strip()`, `.startswith()`, `.items()`), `raise_exception`, `strftime_now`, a `tojson` with
//! `json.dumps`'s output, and a formatter that prints values as Python's `str()` does.

use std::fmt;
use std::time::SystemTime;

use minijinja::value::{Kwargs, Value};
use minijinja::{Environment, Error, ErrorKind};

use super::clock::strftime;
use super::python_format::{json_dumps, python_str, JsonStyle};
use crate::error::{EngineError, Result};

const TEMPLATE_NAME: &str = "chat_template";
/// Template variables the renderer sets; `chat_template_kwargs` may not replace them.
const RESERVED_VARIABLES: [&str; 5] = ["messages", "tools", "add_generation_prompt", "bos_token", "eos_token"];

/// A compiled chat template plus the special-token strings it may reference.
pub struct ChatTemplate {
    source: String,
    bos_token: Option<String>,
    eos_token: Option<String>,
    env: Environment<'static>,
}

impl fmt::Debug for ChatTemplate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ChatTemplate")
            .field("source_len", &self.source.len())
            .field("bos_token", &self.bos_token)
            .field("eos_token", &self.eos_token)
            .finish()
    }
}

/// The error `raise_exception` raises, kept as the source of the minijinja error so that the
/// template author's message reaches the user verbatim rather than wrapped in engine context.
#[derive(Debug)]
struct RaisedByTemplate(String);

impl fmt::Display for RaisedByTemplate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for RaisedByTemplate {}

impl ChatTemplate {
    /// Compiles `source`. `bos_token` / `eos_token` become the template variables of the same name;
    /// a `None` leaves the variable undefined, as HF does for tokens the tokenizer does not define.
    pub fn new(source: &str, bos_token: Option<String>, eos_token: Option<String>) -> Result<Self> {
        let env = build_environment(source, None)?;
        Ok(ChatTemplate {
            source: source.to_string(),
            bos_token,
            eos_token,
            env,
        })
    }

    /// Pins the instant that `strftime_now` reports (instead of the wall clock), so that a render can
    /// be reproduced exactly.
    pub fn with_fixed_time(mut self, now: SystemTime) -> Result<Self> {
        self.env = build_environment(&self.source, Some(now))?;
        Ok(self)
    }

    pub fn source(&self) -> &str {
        &self.source
    }

    /// Renders a conversation. `messages` is the OpenAI messages array; `tools` the OpenAI tools array.
    /// See [`normalize_messages`] for the adjustments made before the template sees them.
    pub fn render(
        &self,
        messages: &serde_json::Value,
        add_generation_prompt: bool,
        tools: Option<&serde_json::Value>,
    ) -> Result<String> {
        self.render_with(messages, add_generation_prompt, tools, None)
    }

    /// [`Self::render`] with extra template variables (a request's `chat_template_kwargs`, e.g.
    /// `{"enable_thinking": false}`), as HF's `apply_chat_template(**kwargs)` passes them. They may not
    /// replace the variables the renderer sets itself.
    pub fn render_with(
        &self,
        messages: &serde_json::Value,
        add_generation_prompt: bool,
        tools: Option<&serde_json::Value>,
        kwargs: Option<&serde_json::Map<String, serde_json::Value>>,
    ) -> Result<String> {
        let messages = Value::from_serialize(&normalize_messages(messages)?);
        let mut extra: Vec<(String, Value)> = Vec::new();
        for (name, value) in kwargs.into_iter().flatten() {
            if RESERVED_VARIABLES.contains(&name.as_str()) {
                return Err(EngineError::bad_request(
                    "chat_template_kwargs",
                    format!("chat_template_kwargs may not set {name:?}: the server sets it"),
                ));
            }
            extra.push((name.clone(), Value::from_serialize(value)));
        }
        self.render_values(messages, add_generation_prompt, tools.map(Value::from_serialize), extra)
    }

    /// Renders already-normalized template values; `tools: None` is Python's `tools=None`.
    fn render_values(
        &self,
        messages: Value,
        add_generation_prompt: bool,
        tools: Option<Value>,
        extra: Vec<(String, Value)>,
    ) -> Result<String> {
        let mut vars: Vec<(String, Value)> = extra;
        vars.extend([
            ("messages".to_string(), messages),
            ("tools".to_string(), tools.unwrap_or(Value::from(()))),
            ("add_generation_prompt".to_string(), Value::from(add_generation_prompt)),
        ]);
        if let Some(bos) = &self.bos_token {
            vars.push(("bos_token".to_string(), Value::from(bos.as_str())));
        }
        if let Some(eos) = &self.eos_token {
            vars.push(("eos_token".to_string(), Value::from(eos.as_str())));
        }
        let template = self
            .env
            .get_template(TEMPLATE_NAME)
            .map_err(template_error)?;
        template
            .render(Value::from_iter(vars))
            .map_err(template_error)
    }
}

fn build_environment(source: &str, fixed_now: Option<SystemTime>) -> Result<Environment<'static>> {
    let mut env = Environment::new();
    env.set_trim_blocks(true);
    env.set_lstrip_blocks(true);
    env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
    env.set_formatter(|out, _state, value| {
        let text = python_str(value)?;
        out.write_str(&text).map_err(Error::from)
    });
    env.add_function("raise_exception", raise_exception);
    env.add_function("strftime_now", move |format: String| {
        strftime(&format, fixed_now.unwrap_or_else(SystemTime::now))
    });
    env.add_filter("tojson", tojson);
    env.add_template_owned(TEMPLATE_NAME, neutralize_generation_tags(source))
        .map_err(template_error)?;
    Ok(env)
}

fn raise_exception(message: String) -> std::result::Result<Value, Error> {
    Err(Error::new(ErrorKind::InvalidOperation, message.clone())
        .with_source(RaisedByTemplate(message)))
}

/// HF's `tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False)`, positional or
/// keyword. Unlike jinja2's built-in it does not HTML-escape `<`, `>`, `&` and `'`.
fn tojson(
    value: &Value,
    ensure_ascii: Option<bool>,
    indent: Option<Value>,
    kwargs: Kwargs,
) -> std::result::Result<Value, Error> {
    let ensure_ascii = kwargs
        .get::<Option<bool>>("ensure_ascii")?
        .or(ensure_ascii)
        .unwrap_or(false);
    let indent = match kwargs.get::<Option<Value>>("indent")?.or(indent) {
        None => None,
        Some(v) if v.is_none() || v.is_undefined() => None,
        Some(v) => Some(indent_unit(&v)?),
    };
    let mut style = JsonStyle::new(ensure_ascii, indent);
    if let Some(separators) = kwargs.get::<Option<Value>>("separators")? {
        if !separators.is_none() {
            let parts: Vec<Value> = separators.try_iter()?.collect();
            match parts.as_slice() {
                [item, key] => {
                    style.item_separator = item.as_str().unwrap_or_default().to_string();
                    style.key_separator = key.as_str().unwrap_or_default().to_string();
                }
                _ => {
                    return Err(Error::new(
                        ErrorKind::InvalidOperation,
                        "separators must be a pair",
                    ))
                }
            }
        }
    }
    style.sort_keys = kwargs.get::<Option<bool>>("sort_keys")?.unwrap_or(false);
    kwargs.assert_all_used()?;
    Ok(Value::from_safe_string(json_dumps(value, &style)?))
}

/// `json.dumps` takes an indent as a count of spaces or as the literal indent string.
fn indent_unit(indent: &Value) -> std::result::Result<String, Error> {
    if let Some(s) = indent.as_str() {
        return Ok(s.to_string());
    }
    match indent.as_i64() {
        Some(n) => Ok(" ".repeat(n.max(0) as usize)),
        None => Err(Error::new(
            ErrorKind::InvalidOperation,
            "indent must be an integer or a string",
        )),
    }
}

/// HF's `{% generation %}` block only marks assistant spans for training masks and is not Jinja that
/// minijinja knows; an always-true `if` has the same output and keeps the tag's whitespace control.
fn neutralize_generation_tags(source: &str) -> String {
    let mut out = String::with_capacity(source.len());
    let mut rest = source;
    while let Some(start) = rest.find("{%") {
        out.push_str(&rest[..start]);
        let tag = &rest[start..];
        let Some(end) = tag.find("%}") else {
            out.push_str(tag);
            return out;
        };
        let inner = &tag[2..end];
        let body = inner
            .trim_start_matches(['-', '+'])
            .trim_end_matches(['-', '+'])
            .trim();
        let replacement = match body {
            "generation" => Some("if true"),
            "endgeneration" => Some("endif"),
            _ => None,
        };
        match replacement {
            Some(word) => {
                let open_len = inner.len() - inner.trim_start_matches(['-', '+']).len();
                let close_len = inner.len() - inner.trim_end_matches(['-', '+']).len();
                out.push_str("{%");
                out.push_str(&inner[..open_len]);
                out.push(' ');
                out.push_str(word);
                out.push(' ');
                out.push_str(&inner[inner.len() - close_len..]);
                out.push_str("%}");
            }
            None => out.push_str(&tag[..end + 2]),
        }
        rest = &tag[end + 2..];
    }
    out.push_str(rest);
    out
}

fn template_error(err: Error) -> EngineError {
    let mut source: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(&err);
    while let Some(inner) = source {
        if let Some(raised) = inner.downcast_ref::<RaisedByTemplate>() {
            return EngineError::Template(raised.0.clone());
        }
        source = inner.source();
    }
    EngineError::Template(err.to_string())
}

/// Adapts OpenAI-style messages to what HF chat templates expect:
/// - `content` given as a list of parts becomes one string: the text parts joined by newlines (the
///   templates here index `content` as a string; other part types have no text form and are refused);
/// - `tool_calls[].function.arguments` given as a JSON string (the OpenAI wire format) becomes the
///   parsed object, since templates print it with `tojson` and would otherwise quote it twice.
pub(crate) fn normalize_messages(messages: &serde_json::Value) -> Result<serde_json::Value> {
    let list = messages
        .as_array()
        .ok_or_else(|| EngineError::bad_request("messages", "must be a list of message objects"))?;
    let mut normalized = Vec::with_capacity(list.len());
    for (i, message) in list.iter().enumerate() {
        let mut message = message.clone();
        let object = message.as_object_mut().ok_or_else(|| {
            EngineError::bad_request(format!("messages[{i}]"), "must be an object")
        })?;
        if let Some(content) = object.get_mut("content") {
            if let Some(parts) = content.as_array() {
                *content = serde_json::Value::String(join_text_parts(parts, i)?);
            }
        }
        if let Some(calls) = object.get_mut("tool_calls").and_then(|c| c.as_array_mut()) {
            for call in calls {
                parse_arguments(call);
            }
        }
        normalized.push(message);
    }
    Ok(serde_json::Value::Array(normalized))
}

fn join_text_parts(parts: &[serde_json::Value], index: usize) -> Result<String> {
    let mut texts = Vec::with_capacity(parts.len());
    for part in parts {
        let kind = part.get("type").and_then(|t| t.as_str()).unwrap_or("text");
        match (kind, part.get("text").and_then(|t| t.as_str())) {
            ("text", Some(text)) => texts.push(text),
            _ => {
                return Err(EngineError::bad_request(
                    format!("messages[{index}].content"),
                    format!("content part of type '{kind}' is not supported; only text parts are"),
                ))
            }
        }
    }
    Ok(texts.join("\n"))
}

fn parse_arguments(call: &mut serde_json::Value) {
    let target = match call.get_mut("function") {
        Some(function) => function,
        None => call,
    };
    if let Some(arguments) = target.get_mut("arguments") {
        if let Some(text) = arguments.as_str() {
            if let Ok(parsed @ serde_json::Value::Object(_)) = serde_json::from_str(text) {
                *arguments = parsed;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn render(source: &str, messages: serde_json::Value) -> Result<String> {
        ChatTemplate::new(source, Some("<s>".into()), None)?.render(&messages, true, None)
    }

    #[test]
    fn raise_exception_message_is_passed_verbatim() {
        let err = render("{{ raise_exception('Roles must alternate!') }}", json!([])).unwrap_err();
        match err {
            EngineError::Template(msg) => assert_eq!(msg, "Roles must alternate!"),
            other => panic!("unexpected error {other:?}"),
        }
    }

    #[test]
    fn text_parts_are_joined_and_string_arguments_parsed() {
        let src = "{% for m in messages %}{{ m.content }}|{% for c in m.tool_calls or [] %}\
                   {{ c.function.arguments | tojson }}{% endfor %}{% endfor %}";
        let messages = json!([
            {"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]},
            {"role": "assistant", "content": null,
             "tool_calls": [{"type": "function", "function": {"name": "f", "arguments": "{\"x\": 1}"}}]}
        ]);
        assert_eq!(render(src, messages).unwrap(), "a\nb|None|{\"x\": 1}");
    }

    #[test]
    fn undefined_bos_and_python_printing() {
        let t = ChatTemplate::new(
            "[{{ bos_token }}][{{ eos_token }}]{{ true }} {{ tools }}",
            None,
            None,
        )
        .unwrap();
        assert_eq!(t.render(&json!([]), false, None).unwrap(), "[][]True None");
    }

    #[test]
    fn chat_template_kwargs_reach_the_template_and_cannot_replace_its_variables() {
        let t = ChatTemplate::new(
            "{% if enable_thinking is defined and not enable_thinking %}<think></think>{% endif %}{{ n }}",
            None,
            None,
        )
        .unwrap();
        let kwargs = json!({"enable_thinking": false, "n": 3});
        assert_eq!(t.render_with(&json!([]), true, None, kwargs.as_object()).unwrap(), "<think></think>3");
        assert_eq!(t.render(&json!([]), true, None).unwrap(), "");
        let bad = json!({"messages": []});
        match t.render_with(&json!([]), true, None, bad.as_object()).unwrap_err() {
            EngineError::BadRequest { field, .. } => assert_eq!(field, "chat_template_kwargs"),
            other => panic!("unexpected error {other:?}"),
        }
    }

    #[test]
    fn generation_tags_keep_whitespace_control() {
        let src = "A\n{%- generation -%}\nB\n{%- endgeneration %}C";
        assert_eq!(
            neutralize_generation_tags(src),
            "A\n{%- if true -%}\nB\n{%- endif %}C"
        );
        let t = ChatTemplate::new(src, None, None).unwrap();
        assert_eq!(t.render(&json!([]), false, None).unwrap(), "ABC");
    }

    /// The tool cases of the jinja2 fixtures, read straight into minijinja values (which keep key order)
    /// so the renderer is checked independently of how serde_json orders object keys.
    #[test]
    fn tool_fixtures_render_like_jinja2() {
        let dir =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/templates");
        let mut checked = 0;
        for name in ["qwen3", "llama3_1", "qwen2_5"] {
            let text = std::fs::read_to_string(dir.join(format!("{name}.json"))).unwrap();
            let doc: Value = serde_json::from_str(&text).unwrap();
            let field = |key: &str| doc.get_attr(key).unwrap();
            let token = |key: &str| field(key).as_str().map(str::to_string);
            let t = ChatTemplate::new(
                field("source").as_str().unwrap(),
                token("bos_token"),
                token("eos_token"),
            )
            .unwrap();
            for case in field("cases").try_iter().unwrap() {
                let tools = case.get_attr("tools").unwrap();
                if tools.is_none() || tools.is_undefined() {
                    continue;
                }
                let agp = case.get_attr("add_generation_prompt").unwrap().is_true();
                let got = t
                    .render_values(case.get_attr("messages").unwrap(), agp, Some(tools), Vec::new())
                    .unwrap();
                assert_eq!(
                    got,
                    case.get_attr("expected").unwrap().as_str().unwrap(),
                    "{name}"
                );
                checked += 1;
            }
        }
        assert_eq!(checked, 6);
    }

    #[test]
    fn content_must_be_text() {
        let messages = json!([{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]);
        assert!(matches!(
            render("{{ messages }}", messages),
            Err(EngineError::BadRequest { .. })
        ));
    }
}
