//! What a request asks its output to match, as plain data carried in `SamplingParams`.

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// The constraint on a request's output.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum GrammarSpec {
    /// Any JSON object (`response_format: {"type": "json_object"}` without a schema).
    JsonObject,
    /// A JSON value matching a JSON Schema (`json_schema`, or `json_object` with MLC's `schema`).
    JsonSchema { schema: Value },
    /// The literal `begin`, a JSON value matching `schema`, then the literal `end`: a forced tool
    /// call in the wrapping the model's chat format uses (e.g. `<tool_call>\n` ... `\n</tool_call>`).
    TaggedJson { begin: String, schema: Value, end: String },
}

impl GrammarSpec {
    /// The request field an error in this spec is reported against.
    pub fn field(&self) -> &'static str {
        match self {
            GrammarSpec::JsonObject | GrammarSpec::JsonSchema { .. } => "response_format",
            GrammarSpec::TaggedJson { .. } => "tools",
        }
    }

    /// The grammar in llguidance's Lark dialect: an optional literal prefix, a `%json` rule, an
    /// optional literal suffix. One form for every variant keeps one compile path.
    pub fn to_lark(&self) -> Result<String, String> {
        let (begin, schema, end) = match self {
            GrammarSpec::JsonObject => ("", serde_json::json!({"type": "object"}), ""),
            GrammarSpec::JsonSchema { schema } => ("", schema.clone(), ""),
            GrammarSpec::TaggedJson { begin, schema, end } => (begin.as_str(), schema.clone(), end.as_str()),
        };
        let schema = with_layout(schema)?;
        let mut rule = String::from("start:");
        for part in [literal(begin), Some("body".to_string()), literal(end)].into_iter().flatten() {
            rule.push(' ');
            rule.push_str(&part);
        }
        let body = serde_json::to_string(&schema).map_err(|e| e.to_string())?;
        Ok(format!("{rule}\nbody: %json {body}\n"))
    }
}

/// A Lark string literal (Lark literals are JSON strings), or nothing for empty text.
fn literal(text: &str) -> Option<String> {
    (!text.is_empty()).then(|| serde_json::to_string(text).unwrap_or_default())
}

/// Fixes the layout of generated JSON to `{"a": 1, "b": [2, 3]}` (Python's `json.dumps` style)
/// unless the schema sets its own `x-guidance` options: with free whitespace a small model can
/// spend its whole token budget on newlines between two values.
fn with_layout(schema: Value) -> Result<Value, String> {
    match schema {
        Value::Object(mut obj) => {
            if !obj.contains_key("x-guidance") {
                obj.insert(
                    "x-guidance".into(),
                    serde_json::json!({"whitespace_flexible": false, "item_separator": ", ", "key_separator": ": "}),
                );
            }
            Ok(Value::Object(obj))
        }
        // JSON Schema allows `true` (anything) and `false` (nothing) as whole schemas.
        Value::Bool(true) => with_layout(serde_json::json!({})),
        Value::Bool(false) => Err("the schema `false` matches no value".into()),
        other => Err(format!("a JSON schema must be an object or a boolean, not {other}")),
    }
}
