//! The grammar module on a toy byte vocabulary: whatever the logits say, masked sampling produces
//! text that parses and matches the schema (checked by hand below, not by llguidance), EOS comes only
//! when the grammar accepts, and invalid schemas are bad requests.

use super::*;
use crate::error::EngineError;
use serde_json::{json, Value};

const EOS: u32 = 256;

/// Every single byte, then EOS, then a few multi-byte tokens so that masks are not trivially bytes.
fn toy_vocab() -> Vocab {
    let mut words: Vec<Vec<u8>> = (0u8..=255).map(|b| vec![b]).collect();
    words.push(b"</s>".to_vec());
    for w in ["{\"", "\": ", "\", \"", "\"}", "true", "false", "null", "name", "  ", "\n", "ab", "], "] {
        words.push(w.as_bytes().to_vec());
    }
    Vocab::from_words(words, &[EOS], vec![EOS])
}

fn compiler() -> GrammarCompiler {
    GrammarCompiler::new(toy_vocab())
}

/// A small deterministic generator (xorshift) for the fake logits.
struct Lcg(u64);
impl Lcg {
    fn next(&mut self) -> f32 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 >> 40) as f32 / (1u64 << 24) as f32
    }
}

/// Decodes under the grammar with random logits; EOS gets a bonus that grows with length so that
/// every run ends. Returns the text and whether it ended with EOS.
fn generate(spec: &GrammarSpec, seed: u64, max_steps: usize) -> (String, bool) {
    let vocab = toy_vocab();
    let mut m = compiler().compile(spec).expect("compiles");
    let mut rng = Lcg(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1);
    let mut out = Vec::new();
    for step in 0..max_steps {
        let mut row: Vec<f32> = (0..vocab.len()).map(|_| rng.next() * 4.0).collect();
        row[EOS as usize] += step as f32 * 0.05;
        m.mask_logits(&mut row);
        let (tok, best) = row.iter().enumerate().fold((0usize, f32::NEG_INFINITY), |acc, (i, &x)| if x > acc.1 { (i, x) } else { acc });
        assert!(best > f32::NEG_INFINITY, "the mask left no token at step {step}");
        if tok as u32 == EOS {
            return (String::from_utf8(out).expect("utf-8"), true);
        }
        m.commit(tok as u32).expect("a masked token is accepted");
        let w = &toy_word(tok);
        out.extend_from_slice(w);
    }
    (String::from_utf8_lossy(&out).into_owned(), false)
}

fn toy_word(id: usize) -> Vec<u8> {
    let extra = ["{\"", "\": ", "\", \"", "\"}", "true", "false", "null", "name", "  ", "\n", "ab", "], "];
    if id < 256 {
        vec![id as u8]
    } else {
        extra[id - 257].as_bytes().to_vec()
    }
}

fn person_schema() -> Value {
    json!({
        "type": "object",
        "properties": {
            "name": {"type": "string", "maxLength": 6},
            "age": {"type": "integer", "minimum": 0, "maximum": 120},
            "role": {"enum": ["admin", "user"]},
            "tags": {"type": "array", "items": {"type": "boolean"}, "maxItems": 3},
            "address": {
                "type": "object",
                "properties": {"zip": {"type": "string", "pattern": "^[0-9]{5}$"}},
                "required": ["zip"],
                "additionalProperties": false
            }
        },
        "required": ["name", "age", "role", "address"],
        "additionalProperties": false
    })
}

/// An independent check of `person_schema` on a parsed value.
fn check_person(v: &Value) {
    let obj = v.as_object().expect("object");
    for key in obj.keys() {
        assert!(["name", "age", "role", "tags", "address"].contains(&key.as_str()), "unexpected key {key}");
    }
    let name = obj["name"].as_str().expect("name is a string");
    assert!(name.chars().count() <= 6);
    let age = obj["age"].as_i64().expect("age is an integer");
    assert!((0..=120).contains(&age));
    assert!(["admin", "user"].contains(&obj["role"].as_str().expect("role is a string")));
    if let Some(tags) = obj.get("tags") {
        let tags = tags.as_array().expect("tags is an array");
        assert!(tags.len() <= 3 && tags.iter().all(Value::is_boolean));
    }
    let addr = obj["address"].as_object().expect("address is an object");
    assert_eq!(addr.len(), 1);
    let zip = addr["zip"].as_str().expect("zip is a string");
    assert!(zip.len() == 5 && zip.bytes().all(|b| b.is_ascii_digit()), "zip {zip:?}");
}

#[test]
fn masked_random_decoding_always_matches_the_schema() {
    let spec = GrammarSpec::JsonSchema { schema: person_schema() };
    for seed in 0..12 {
        let (text, ended) = generate(&spec, seed, 400);
        assert!(ended, "seed {seed}: no EOS within the step limit: {text:?}");
        let v: Value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("seed {seed}: {e}: {text:?}"));
        check_person(&v);
    }
}

#[test]
fn json_object_gives_an_object() {
    for seed in 0..8 {
        let (text, ended) = generate(&GrammarSpec::JsonObject, seed, 600);
        if ended {
            // Syntax only: random digits make numbers like 1E724, valid JSON beyond f64's range.
            serde_json::from_str::<serde::de::IgnoredAny>(&text).unwrap_or_else(|e| panic!("{e}: {text:?}"));
            assert!(text.starts_with('{') && text.ends_with('}'), "{text:?}");
        } else {
            assert!(text.starts_with('{'), "{text:?}");
        }
    }
}

#[test]
fn tagged_json_is_wrapped() {
    let spec = GrammarSpec::TaggedJson {
        begin: "<tool_call>\n".into(),
        schema: json!({"type": "object", "properties": {"name": {"const": "get_weather"}, "arguments": {"type": "object", "properties": {"city": {"enum": ["Paris", "Oslo"]}}, "required": ["city"], "additionalProperties": false}}, "required": ["name", "arguments"], "additionalProperties": false}),
        end: "\n</tool_call>".into(),
    };
    for seed in 0..6 {
        let (text, ended) = generate(&spec, seed, 300);
        assert!(ended, "{text:?}");
        let body = text.strip_prefix("<tool_call>\n").and_then(|t| t.strip_suffix("\n</tool_call>")).unwrap_or_else(|| panic!("{text:?}"));
        let v: Value = serde_json::from_str(body).unwrap();
        assert_eq!(v["name"], "get_weather");
        assert!(["Paris", "Oslo"].contains(&v["arguments"]["city"].as_str().unwrap()));
    }
}

#[test]
fn eos_only_when_the_grammar_accepts() {
    let spec = GrammarSpec::JsonSchema { schema: json!({"type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"]}) };
    let mut m = compiler().compile(&spec).unwrap();
    assert!(!m.allowed().is_allowed(EOS));
    assert!(m.allowed().is_allowed(b'{' as u32));
    assert!(!m.allowed().is_allowed(b'[' as u32));
    for b in br#"{"a": 7"# {
        m.commit(*b as u32).unwrap();
        assert!(!m.allowed().is_allowed(EOS));
    }
    m.commit(b'}' as u32).unwrap();
    assert!(m.is_accepting());
    let allowed = m.allowed();
    assert!(allowed.is_allowed(EOS));
    assert_eq!(allowed.num_set(), 1, "nothing may follow a complete object but EOS");
}

#[test]
fn a_rejected_token_ends_the_sequence() {
    let mut m = compiler().compile(&GrammarSpec::JsonObject).unwrap();
    assert!(m.commit(b'x' as u32).is_err());
    let allowed = m.allowed();
    assert!(allowed.is_allowed(EOS));
    assert_eq!(allowed.num_set(), 1);
}

#[test]
fn invalid_schemas_are_bad_requests() {
    let bad = [
        json!({"type": "no-such-type"}),
        json!({"type": "object", "properties": 5}),
        json!({"type": "object", "required": "a"}),
        json!(false),
        json!("string"),
        json!({"$ref": "#/$defs/missing"}),
    ];
    for schema in bad {
        match compiler().compile(&GrammarSpec::JsonSchema { schema: schema.clone() }) {
            Err(EngineError::BadRequest { field, message }) => {
                assert_eq!(field, "response_format");
                assert!(message.contains("schema"), "{message}");
            }
            other => panic!("{schema}: expected a bad request, got {other:?}"),
        }
    }
}

#[test]
fn spec_reads_the_wire_format() {
    let s: GrammarSpec = serde_json::from_value(json!({"type": "json_schema", "schema": {"type": "string"}})).unwrap();
    assert_eq!(s, GrammarSpec::JsonSchema { schema: json!({"type": "string"}) });
    let s: GrammarSpec = serde_json::from_value(json!({"type": "json_object"})).unwrap();
    assert_eq!(s, GrammarSpec::JsonObject);
    assert!(serde_json::from_value::<GrammarSpec>(json!({"type": "regex", "pattern": "a"})).is_err());
}

#[test]
fn layout_is_compact_unless_the_schema_says_otherwise() {
    let lark = GrammarSpec::JsonObject.to_lark().unwrap();
    assert!(lark.contains("\"whitespace_flexible\":false"), "{lark}");
    let own = GrammarSpec::JsonSchema { schema: json!({"x-guidance": {"whitespace_flexible": true}}) };
    assert!(own.to_lark().unwrap().contains("\"whitespace_flexible\":true"));
}
