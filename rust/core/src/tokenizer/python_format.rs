//! Python's text forms of template values: `json.dumps` (behind the `tojson` filter) and `repr` (what
//! jinja2 prints for `{{ value }}`).
//!
//! Chat templates are written against Python jinja2, and the model was trained on exactly the bytes that
//! Python produced: `json.dumps` puts a space after `,` and `:`, escapes only what Python escapes, and
//! prints floats the way `repr(float)` does; `{{ none }}` prints `None`, `{{ true }}` prints `True` and a
//! dict prints as `{'a': 1}`. minijinja's own forms differ on all of these, so the template environment
//! routes both through this module.

use minijinja::value::{Value, ValueKind};
use minijinja::{Error, ErrorKind};

/// The knobs of `json.dumps` that HF's `tojson` passes through.
#[derive(Debug, Clone)]
pub(crate) struct JsonStyle {
    /// Escape everything outside printable ASCII as `\uXXXX` (Python's `ensure_ascii`).
    pub ensure_ascii: bool,
    /// `None`: one line; `Some(unit)`: one item per line, nested levels indented by `unit`.
    pub indent: Option<String>,
    pub item_separator: String,
    pub key_separator: String,
    pub sort_keys: bool,
}

impl JsonStyle {
    /// Python's defaults: the item separator loses its trailing space when indenting, because the
    /// newline already separates items.
    pub fn new(ensure_ascii: bool, indent: Option<String>) -> Self {
        let item_separator = if indent.is_some() { "," } else { ", " };
        JsonStyle {
            ensure_ascii,
            indent,
            item_separator: item_separator.to_string(),
            key_separator: ": ".to_string(),
            sort_keys: false,
        }
    }
}

/// `json.dumps(value, ...)` for a template value.
pub(crate) fn json_dumps(value: &Value, style: &JsonStyle) -> Result<String, Error> {
    let mut out = String::new();
    write_json(&mut out, value, style, 0)?;
    Ok(out)
}

fn write_json(
    out: &mut String,
    value: &Value,
    style: &JsonStyle,
    depth: usize,
) -> Result<(), Error> {
    match value.kind() {
        ValueKind::Undefined | ValueKind::None => out.push_str("null"),
        ValueKind::Bool => out.push_str(if value.is_true() { "true" } else { "false" }),
        ValueKind::Number => write_number(out, value, NumberStyle::Json),
        ValueKind::String => {
            write_json_string(out, value.as_str().unwrap_or_default(), style.ensure_ascii)
        }
        ValueKind::Map => {
            let mut entries = map_entries(value)?;
            if style.sort_keys {
                entries.sort_by(|a, b| a.0.cmp(&b.0));
            }
            write_json_container(
                out,
                style,
                depth,
                ('{', '}'),
                &entries,
                |out, (key, item)| {
                    write_json_string(out, key, style.ensure_ascii);
                    out.push_str(&style.key_separator);
                    write_json(out, item, style, depth + 1)
                },
            )?;
        }
        ValueKind::Seq | ValueKind::Iterable => {
            let items: Vec<Value> = value.try_iter()?.collect();
            write_json_container(out, style, depth, ('[', ']'), &items, |out, item| {
                write_json(out, item, style, depth + 1)
            })?;
        }
        _ => {
            return Err(Error::new(
                ErrorKind::InvalidOperation,
                format!("Object of type {} is not JSON serializable", value.kind()),
            ));
        }
    }
    Ok(())
}

fn write_json_container<T>(
    out: &mut String,
    style: &JsonStyle,
    depth: usize,
    (open, close): (char, char),
    items: &[T],
    mut write_item: impl FnMut(&mut String, &T) -> Result<(), Error>,
) -> Result<(), Error> {
    out.push(open);
    if items.is_empty() {
        out.push(close);
        return Ok(());
    }
    for (i, item) in items.iter().enumerate() {
        if i > 0 {
            out.push_str(&style.item_separator);
        }
        if let Some(unit) = &style.indent {
            out.push('\n');
            out.push_str(&unit.repeat(depth + 1));
        }
        write_item(out, item)?;
    }
    if let Some(unit) = &style.indent {
        out.push('\n');
        out.push_str(&unit.repeat(depth));
    }
    out.push(close);
    Ok(())
}

/// Map entries in iteration order with keys coerced the way `json.dumps` coerces them
/// (Python allows str, int, float, bool and None keys and writes them as strings).
fn map_entries(value: &Value) -> Result<Vec<(String, Value)>, Error> {
    let mut entries = Vec::new();
    for key in value.try_iter()? {
        let item = value.get_item(&key)?;
        let name = match key.kind() {
            ValueKind::String => key.as_str().unwrap_or_default().to_string(),
            ValueKind::None | ValueKind::Undefined => "null".to_string(),
            ValueKind::Bool => if key.is_true() { "true" } else { "false" }.to_string(),
            ValueKind::Number => {
                let mut s = String::new();
                write_number(&mut s, &key, NumberStyle::Json);
                s
            }
            other => {
                return Err(Error::new(
                    ErrorKind::InvalidOperation,
                    format!("keys must be str, int, float, bool or None, not {other}"),
                ))
            }
        };
        entries.push((name, item));
    }
    Ok(entries)
}

fn write_json_string(out: &mut String, s: &str, ensure_ascii: bool) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            c if (c as u32) < 0x20 => push_u_escape(out, c as u32),
            c if ensure_ascii && !(' '..='~').contains(&c) => {
                let mut units = [0u16; 2];
                for unit in c.encode_utf16(&mut units) {
                    push_u_escape(out, u32::from(*unit));
                }
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

fn push_u_escape(out: &mut String, unit: u32) {
    out.push_str(&format!("\\u{unit:04x}"));
}

#[derive(Clone, Copy)]
enum NumberStyle {
    /// `json.dumps`: non-finite floats are `NaN` / `Infinity`.
    Json,
    /// `repr`: non-finite floats are `nan` / `inf`.
    Repr,
}

fn write_number(out: &mut String, value: &Value, style: NumberStyle) {
    if value.is_integer() {
        out.push_str(&value.to_string());
        return;
    }
    match f64::try_from(value.clone()) {
        Ok(f) => out.push_str(&float_repr(f, style)),
        Err(_) => out.push_str(&value.to_string()),
    }
}

/// Python's `repr(float)`: the shortest digits that round-trip, positional for exponents in
/// [-4, 16), scientific with a signed two-digit exponent otherwise, and always a `.0` on integral values.
fn float_repr(f: f64, style: NumberStyle) -> String {
    if f.is_nan() {
        return match style {
            NumberStyle::Json => "NaN",
            NumberStyle::Repr => "nan",
        }
        .to_string();
    }
    if f.is_infinite() {
        let body = match style {
            NumberStyle::Json => "Infinity",
            NumberStyle::Repr => "inf",
        };
        return if f < 0.0 {
            format!("-{body}")
        } else {
            body.to_string()
        };
    }
    if f == 0.0 {
        return if f.is_sign_negative() { "-0.0" } else { "0.0" }.to_string();
    }
    // Rust's `{:e}` gives the shortest round-trip digits: "-1.2345e3", "5e-7".
    let sci = format!("{:e}", f.abs());
    let (mantissa, exp) = sci.split_once('e').unwrap_or((sci.as_str(), "0"));
    let exp: i32 = exp.parse().unwrap_or(0);
    let digits: String = mantissa.chars().filter(|c| c.is_ascii_digit()).collect();
    let sign = if f < 0.0 { "-" } else { "" };
    let body = if (-4..16).contains(&exp) {
        positional(&digits, exp)
    } else {
        let (first, rest) = digits.split_at(1);
        let frac = if rest.is_empty() {
            String::new()
        } else {
            format!(".{rest}")
        };
        let exp_sign = if exp < 0 { '-' } else { '+' };
        format!("{first}{frac}e{exp_sign}{:02}", exp.abs())
    };
    format!("{sign}{body}")
}

fn positional(digits: &str, exp: i32) -> String {
    if exp < 0 {
        return format!("0.{}{digits}", "0".repeat((-exp - 1) as usize));
    }
    let int_len = exp as usize + 1;
    if digits.len() <= int_len {
        format!("{digits}{}.0", "0".repeat(int_len - digits.len()))
    } else {
        format!("{}.{}", &digits[..int_len], &digits[int_len..])
    }
}

/// What jinja2 prints for `{{ value }}`: `str(value)`, which for containers is their `repr`.
/// Strings print raw at the top level; `None` is `None` while undefined prints nothing.
pub(crate) fn python_str(value: &Value) -> Result<String, Error> {
    match value.kind() {
        ValueKind::Undefined => Ok(String::new()),
        ValueKind::String => Ok(value.as_str().unwrap_or_default().to_string()),
        _ => python_repr(value),
    }
}

fn python_repr(value: &Value) -> Result<String, Error> {
    let mut out = String::new();
    write_repr(&mut out, value)?;
    Ok(out)
}

fn write_repr(out: &mut String, value: &Value) -> Result<(), Error> {
    match value.kind() {
        ValueKind::Undefined => {}
        ValueKind::None => out.push_str("None"),
        ValueKind::Bool => out.push_str(if value.is_true() { "True" } else { "False" }),
        ValueKind::Number => write_number(out, value, NumberStyle::Repr),
        ValueKind::String => write_repr_string(out, value.as_str().unwrap_or_default()),
        ValueKind::Map => {
            out.push('{');
            for (i, key) in value.try_iter()?.enumerate() {
                if i > 0 {
                    out.push_str(", ");
                }
                let item = value.get_item(&key)?;
                write_repr(out, &key)?;
                out.push_str(": ");
                write_repr(out, &item)?;
            }
            out.push('}');
        }
        ValueKind::Seq | ValueKind::Iterable => {
            out.push('[');
            for (i, item) in value.try_iter()?.enumerate() {
                if i > 0 {
                    out.push_str(", ");
                }
                write_repr(out, &item)?;
            }
            out.push(']');
        }
        _ => out.push_str(&value.to_string()),
    }
    Ok(())
}

/// `repr(str)`: single quotes unless the text has a single quote and no double quote.
fn write_repr_string(out: &mut String, s: &str) {
    let quote = if s.contains('\'') && !s.contains('"') {
        '"'
    } else {
        '\''
    };
    out.push(quote);
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if c == quote => {
                out.push('\\');
                out.push(c);
            }
            c if (c as u32) < 0x20 || (0x7f..0xa0).contains(&(c as u32)) => {
                out.push_str(&format!("\\x{:02x}", c as u32));
            }
            c => out.push(c),
        }
    }
    out.push(quote);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dumps(json: &str, style: &JsonStyle) -> String {
        let parsed: serde_json::Value = serde_json::from_str(json).expect("test json");
        json_dumps(&Value::from_serialize(&parsed), style).expect("dumps")
    }

    #[test]
    fn floats_print_like_python_repr() {
        let cases = [
            (1.0, "1.0"),
            (0.1, "0.1"),
            (-2.5, "-2.5"),
            (1e16, "1e+16"),
            (1.5e-5, "1.5e-05"),
            (0.0001, "0.0001"),
            (123456789012345.6, "123456789012345.6"),
            (1e22, "1e+22"),
            (100.0, "100.0"),
        ];
        for (f, want) in cases {
            assert_eq!(float_repr(f, NumberStyle::Repr), want, "{f}");
        }
    }

    #[test]
    fn dumps_matches_python_separators_and_escapes() {
        // Expected strings are what CPython 3.11's json.dumps prints for the same input.
        let compact = JsonStyle::new(false, None);
        assert_eq!(
            dumps(r#"{"a": [1, 2.5, null, true], "b": "x\"y\n"}"#, &compact),
            r#"{"a": [1, 2.5, null, true], "b": "x\"y\n"}"#
        );
        assert_eq!(dumps(r#"["é🎉\u0001"]"#, &compact), "[\"é🎉\\u0001\"]");
        let ascii = JsonStyle::new(true, None);
        assert_eq!(dumps(r#"["é🎉"]"#, &ascii), r#"["\u00e9\ud83c\udf89"]"#);
        let indented = JsonStyle::new(false, Some("  ".into()));
        assert_eq!(
            dumps(r#"{"a": [1, {}], "b": []}"#, &indented),
            "{\n  \"a\": [\n    1,\n    {}\n  ],\n  \"b\": []\n}"
        );
    }

    #[test]
    fn str_prints_like_python() {
        let parsed: serde_json::Value =
            serde_json::from_str(r#"{"k": [1, "it's", null, false, 2.0], "q": "say \"hi\""}"#)
                .expect("json");
        let value = Value::from_serialize(&parsed);
        assert_eq!(
            python_str(&value).expect("str"),
            r#"{'k': [1, "it's", None, False, 2.0], 'q': 'say "hi"'}"#
        );
        assert_eq!(python_str(&Value::from(())).expect("str"), "None");
        assert_eq!(python_str(&Value::UNDEFINED).expect("str"), "");
    }
}
