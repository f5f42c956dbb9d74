//! Chat templates rendered by minijinja must be byte-identical to Python jinja2 with HF's chat-template
//! environment. The expected strings in tests/fixtures/templates/*.json were rendered by
//! tests/fixtures/gen_template_fixtures.py; regenerate them with that script, never from this crate.

use std::path::PathBuf;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use mlc_core::error::EngineError;
use mlc_core::tokenizer::ChatTemplate;
use serde_json::Value;

const TEMPLATES: &[&str] = &[
    "llama3",
    "qwen3",
    "smollm2",
    "llama3_1",
    "llama3_2",
    "qwen2_5",
    "mistral_nemo",
    "gemma2",
    "gemma3",
    "phi3_5",
    "phi4",
    "olmo2",
];

fn fixture(name: &str) -> Value {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/fixtures/templates")
        .join(format!("{name}.json"));
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).expect("fixture JSON")
}

fn template(doc: &Value) -> ChatTemplate {
    let text = |key: &str| doc[key].as_str().map(str::to_string);
    let now = UNIX_EPOCH + Duration::from_secs(doc["now_unix"].as_u64().expect("now_unix"));
    ChatTemplate::new(
        doc["source"].as_str().expect("source"),
        text("bos_token"),
        text("eos_token"),
    )
    .and_then(|t| t.with_fixed_time(now))
    .unwrap_or_else(|e| panic!("{}: {e}", doc["name"]))
}

/// Renders every case of the selected kind; returns (checked, mismatch descriptions).
fn check(name: &str, with_tools: bool) -> (usize, Vec<String>) {
    let doc = fixture(name);
    let template = template(&doc);
    let mut checked = 0;
    let mut failures = Vec::new();
    for case in doc["cases"].as_array().expect("cases") {
        let tools = case.get("tools").filter(|t| !t.is_null());
        if tools.is_some() != with_tools {
            continue;
        }
        checked += 1;
        let label = format!("{name}/{}", case["name"].as_str().unwrap_or("?"));
        let add_generation_prompt = case["add_generation_prompt"]
            .as_bool()
            .expect("add_generation_prompt");
        let got = template.render(&case["messages"], add_generation_prompt, tools);
        match (
            case.get("expected").and_then(Value::as_str),
            case.get("error").and_then(Value::as_str),
            got,
        ) {
            (Some(want), _, Ok(got)) if got == want => {}
            (_, Some(want), Err(EngineError::Template(msg))) if msg == want => {}
            (want, want_err, got) => failures.push(format!(
                "{label}\n--- want {:?}\n--- got  {:?}",
                want.or(want_err),
                got.map_err(|e| e.to_string())
            )),
        }
    }
    (checked, failures)
}

#[test]
fn templates_render_like_jinja2() {
    let mut total = 0;
    let mut failures = Vec::new();
    for name in TEMPLATES {
        let (checked, failed) = check(name, false);
        total += checked;
        failures.extend(failed);
    }
    println!(
        "{}/{} conversations byte-identical",
        total - failures.len(),
        total
    );
    assert!(total >= 83, "fixture cases went missing: {total}");
    assert!(
        failures.is_empty(),
        "{} mismatches:\n{}",
        failures.len(),
        failures.join("\n\n")
    );
}

/// Tool schemas are printed with `tojson`, so their key order must survive parsing the request. This
/// needs serde_json's `preserve_order` feature (insertion-ordered maps), as Python dicts have.
#[test]
fn tool_schemas_render_like_jinja2() {
    let probe: Value = serde_json::from_str(r#"{"b": 1, "a": 2}"#).expect("json");
    let first_key = probe.as_object().and_then(|m| m.keys().next().cloned());
    assert_eq!(
        first_key.as_deref(),
        Some("b"),
        "serde_json sorts object keys: enable its `preserve_order` feature so tool schemas keep the \
         caller's key order"
    );
    let mut total = 0;
    let mut failures = Vec::new();
    for name in TEMPLATES {
        let (checked, failed) = check(name, true);
        total += checked;
        failures.extend(failed);
    }
    println!(
        "{}/{} tool conversations byte-identical",
        total - failures.len(),
        total
    );
    assert!(total >= 6, "fixture cases went missing: {total}");
    assert!(
        failures.is_empty(),
        "{} mismatches:\n{}",
        failures.len(),
        failures.join("\n\n")
    );
}

#[test]
fn strftime_now_follows_the_clock_when_not_pinned() {
    let t = ChatTemplate::new("{{ strftime_now('%Y') }}", None, None).expect("template");
    let year = t
        .render(&serde_json::json!([]), false, None)
        .expect("render");
    let now_year = 1970
        + SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .expect("clock")
            .as_secs()
            / 31_556_952;
    assert!(
        year == now_year.to_string()
            || year == (now_year - 1).to_string()
            || year == (now_year + 1).to_string()
    );
}
