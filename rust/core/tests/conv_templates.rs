//! MLC conversation templates must render exactly what MLC LLM renders. Every expected prompt below
//! was worked out by hand from MLC's definitions: the template strings in
//! `python/mlc_llm/conversation_template/<file>.py` (named beside each case) joined by the rules of
//! `Conversation.as_prompt` in `python/mlc_llm/protocol/conversation_protocol.py`, with the request
//! handling of `serve/engine_base.py` (a leading system message replaces `system_message`, a final
//! `("assistant", None)` is the generation prompt).

use mlc_core::error::EngineError;
use mlc_core::tokenizer::conv_template::builtin_names;
use mlc_core::tokenizer::{ConvTemplate, RenderedPrompt};
use serde_json::{json, Value};

/// The conversation every built-in is checked with: [system, user, assistant, user].
fn conversation() -> Value {
    json!([
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hi."},
        {"role": "assistant", "content": "Hello!"},
        {"role": "user", "content": "Sky color?"}
    ])
}

const IM_EXPECTED: &str =
    "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi.<|im_end|>\n\
     <|im_start|>assistant\nHello!<|im_end|>\n<|im_start|>user\nSky color?<|im_end|>\n\
     <|im_start|>assistant\n";
const LLAMA3_EXPECTED: &str = "<|start_header_id|>system<|end_header_id|>\n\nBe brief.<|eot_id|>\
     <|start_header_id|>user<|end_header_id|>\n\nHi.<|eot_id|>\
     <|start_header_id|>assistant<|end_header_id|>\n\nHello!<|eot_id|>\
     <|start_header_id|>user<|end_header_id|>\n\nSky color?<|eot_id|>\
     <|start_header_id|>assistant<|end_header_id|>\n\n";
const GEMMA_EXPECTED: &str = "Be brief.<start_of_turn>user\nHi.<end_of_turn>\n\
     <start_of_turn>model\nHello!<end_of_turn>\n<start_of_turn>user\nSky color?<end_of_turn>\n\
     <start_of_turn>model\n";
const DEEPSEEK_R1_EXPECTED: &str = "<\u{ff5c}begin\u{2581}of\u{2581}sentence\u{ff5c}>Be brief.\
     <\u{ff5c}User\u{ff5c}>Hi.<\u{ff5c}Assistant\u{ff5c}>Hello!<\u{ff5c}end\u{2581}of\u{2581}sentence\u{ff5c}>\
     <\u{ff5c}User\u{ff5c}>Sky color?<\u{ff5c}Assistant\u{ff5c}>";

/// (template, expected text, expected prefix token ids), one per built-in.
const EXPECTED: &[(&str, &str, &[u32])] = &[
    // llama.py: two seps (" " after user, " </s>" after assistant); no role before the first message.
    (
        "llama-2",
        "[INST] <<SYS>>\nBe brief.\n<</SYS>>\n\nHi. [/INST] Hello! </s><s>[INST] Sky color? [/INST] ",
        &[1],
    ),
    // llama.py
    ("llama-3", LLAMA3_EXPECTED, &[128000]),
    // llama.py
    ("llama-3_1", LLAMA3_EXPECTED, &[128000]),
    // qwen2.py
    ("qwen2", IM_EXPECTED, &[]),
    // qwen3.py (nothing to strip: no reasoning in the history)
    ("qwen3", IM_EXPECTED, &[]),
    // registry.py
    ("chatml", IM_EXPECTED, &[]),
    // registry.py: the system template is the bare message.
    (
        "chatml_nosystem",
        "Be brief.<|im_start|>user\nHi.<|im_end|>\n<|im_start|>assistant\nHello!<|im_end|>\n\
         <|im_start|>user\nSky color?<|im_end|>\n<|im_start|>assistant\n",
        &[],
    ),
    // mistral.py: the system prompt runs straight into the first user message; role_empty_sep is "".
    (
        "mistral_default",
        "[INST] Be brief.Hi. [/INST] Hello! [INST] Sky color? [/INST]",
        &[1],
    ),
    // phi.py
    (
        "phi-2",
        "Be brief.Instruct: Hi.\nOutput: Hello!\nInstruct: Sky color?\nOutput:",
        &[],
    ),
    // phi.py: no separator after the system prompt.
    (
        "phi-3",
        "<|system|>\nBe brief.<|user|>\nHi.<|end|>\n<|assistant|>\nHello!<|end|>\n\
         <|user|>\nSky color?<|end|>\n<|assistant|>\n",
        &[1],
    ),
    // gemma.py
    ("gemma_instruction", GEMMA_EXPECTED, &[2]),
    // gemma.py
    ("gemma3_instruction", GEMMA_EXPECTED, &[2]),
    // tinyllama.py
    (
        "tinyllama_v1_0",
        "<|system|>\nBe brief.</s><|user|>\nHi.</s><|assistant|>\nHello!</s><|user|>\nSky color?</s>\
         <|assistant|>\n",
        &[],
    ),
    // hermes.py
    ("hermes2_pro_llama3", IM_EXPECTED, &[]),
    // hermes.py
    ("hermes3_llama-3_1", IM_EXPECTED, &[]),
    // olmo.py: bare system message, "\n" after every message.
    (
        "olmo",
        "Be brief.<|user|>\nHi.\n<|assistant|>\nHello!\n<|user|>\nSky color?\n<|assistant|>\n",
        &[50279],
    ),
    // olmo2.py: "<|endoftext|>\n" after every message, user and assistant alike.
    (
        "olmo2",
        "<|system|>\nBe brief.\n<|user|>\nHi.<|endoftext|>\n<|assistant|>\nHello!<|endoftext|>\n\
         <|user|>\nSky color?<|endoftext|>\n<|assistant|>\n",
        &[100257],
    ),
    // deepseek.py: two seps ("" after user, end-of-sentence after assistant), empty role separators.
    ("deepseek_r1_qwen", DEEPSEEK_R1_EXPECTED, &[]),
    // deepseek.py
    ("deepseek_r1_llama", DEEPSEEK_R1_EXPECTED, &[]),
];

fn builtin(name: &str) -> ConvTemplate {
    ConvTemplate::builtin(name).unwrap_or_else(|| panic!("no built-in {name}"))
}

fn render(template: &ConvTemplate, messages: Value) -> RenderedPrompt {
    template
        .render(&messages, true)
        .unwrap_or_else(|e| panic!("{:?}: {e}", template.name))
}

fn bad_request_field(err: EngineError) -> (String, String) {
    match err {
        EngineError::BadRequest { field, message } => (field, message),
        other => panic!("expected a bad request, got {other:?}"),
    }
}

fn template_message(err: EngineError) -> String {
    match err {
        EngineError::Template(message) => message,
        other => panic!("expected a template error, got {other:?}"),
    }
}

#[test]
fn every_builtin_renders_mlc_prompt() {
    for name in builtin_names() {
        let (_, text, prefix) = EXPECTED
            .iter()
            .find(|(n, _, _)| *n == name)
            .unwrap_or_else(|| panic!("built-in {name} has no expected prompt in this test"));
        let rendered = render(&builtin(name), conversation());
        assert_eq!(rendered.text, *text, "template {name}");
        assert_eq!(rendered.prefix_token_ids, *prefix, "template {name}");
    }
    assert_eq!(builtin_names().len(), EXPECTED.len());
}

#[test]
fn builtin_stop_criteria_are_mlc_values() {
    // llama.py, qwen2.py, phi.py
    let llama3 = builtin("llama-3");
    assert_eq!(llama3.stop_strs(), ["<|end_of_text|>", "<|eot_id|>"]);
    assert_eq!(llama3.stop_token_ids(), [128001, 128009]);
    assert_eq!(
        builtin("llama-3_1").stop_token_ids(),
        [128001, 128008, 128009]
    );
    assert!(builtin("llama-3_1").stop_strs().is_empty());
    assert_eq!(
        builtin("qwen2").stop_strs(),
        ["<|endoftext|>", "<|im_end|>"]
    );
    assert_eq!(builtin("phi-3").stop_token_ids(), [2, 32000, 32001, 32007]);
    assert_eq!(builtin("gemma3_instruction").stop_token_ids(), [1, 106]);
    // gemma.py, olmo.py, olmo2.py
    assert_eq!(builtin("gemma_instruction").stop_token_ids(), [1, 107]);
    assert_eq!(builtin("gemma_instruction").stop_strs(), ["<end_of_turn>"]);
    assert_eq!(builtin("gemma3_instruction").stop_strs(), ["<end_of_turn>"]);
    assert_eq!(builtin("phi-3").stop_strs(), ["<|endoftext|>"]);
    assert_eq!(builtin("olmo").stop_token_ids(), [50279]);
    assert!(builtin("olmo").stop_strs().is_empty());
    assert_eq!(builtin("olmo2").stop_token_ids(), [100257]);
    assert_eq!(builtin("olmo2").stop_strs(), ["<|endoftext|>"]);
}

/// The templates of the Gemma, Phi-3 and OLMo families without a system message, with and without the
/// generation prompt. Each expected string is `Conversation.as_prompt` worked by hand from the file named:
/// the system prompt is `system_template` with the default `system_message` (printed only when the result
/// is non-empty), then `roles[role] + role_content_sep + content + sep` per message, then
/// `roles["assistant"] + role_empty_sep` for the generation prompt.
#[test]
fn model_family_templates_without_system_message() {
    let turns = json!([
        {"role": "user", "content": "Hi."},
        {"role": "assistant", "content": "Hello!"},
        {"role": "user", "content": "Sky color?"}
    ]);
    let gemma_turns = "<start_of_turn>user\nHi.<end_of_turn>\n<start_of_turn>model\nHello!<end_of_turn>\n\
                       <start_of_turn>user\nSky color?<end_of_turn>\n";
    let phi3_turns = "<|system|>\nYou are a helpful digital assistant. Please provide safe, ethical and \
                      accurate information to the user.<|user|>\nHi.<|end|>\n<|assistant|>\nHello!<|end|>\n\
                      <|user|>\nSky color?<|end|>\n";
    let olmo2_turns = "<|system|>\n\n<|user|>\nHi.<|endoftext|>\n<|assistant|>\nHello!<|endoftext|>\n\
                       <|user|>\nSky color?<|endoftext|>\n";
    let olmo_turns = "<|user|>\nHi.\n<|assistant|>\nHello!\n<|user|>\nSky color?\n";
    let cases: &[(&str, &str, &str, &[u32])] = &[
        // gemma.py: system_message "" and system_template "{system_message}": no system text at all.
        ("gemma_instruction", gemma_turns, "<start_of_turn>model\n", &[2]),
        ("gemma3_instruction", gemma_turns, "<start_of_turn>model\n", &[2]),
        // phi.py: the default system message, with no separator after it.
        ("phi-3", phi3_turns, "<|assistant|>\n", &[1]),
        // olmo2.py: the system block is printed even when the message is empty.
        ("olmo2", olmo2_turns, "<|assistant|>\n", &[100257]),
        // olmo.py
        ("olmo", olmo_turns, "<|assistant|>\n", &[50279]),
    ];
    for (name, history, generation, prefix) in cases {
        let template = builtin(name);
        let with = template.render(&turns, true).unwrap();
        assert_eq!(with.text, format!("{history}{generation}"), "{name}");
        assert_eq!(with.prefix_token_ids, *prefix, "{name}");
        let without = template.render(&turns, false).unwrap();
        assert_eq!(without.text, *history, "{name} without generation prompt");
    }
}

/// MLC has no system role to refuse or fold for Gemma: the system message replaces the empty
/// `system_message`, and `system_template` "{system_message}" puts it, bare, before the first turn.
#[test]
fn gemma_system_message_is_prepended_as_mlc_does() {
    let messages = json!([
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hi."}
    ]);
    for name in ["gemma_instruction", "gemma3_instruction"] {
        let rendered = render(&builtin(name), messages.clone());
        assert_eq!(
            rendered.text,
            "Be brief.<start_of_turn>user\nHi.<end_of_turn>\n<start_of_turn>model\n",
            "{name}"
        );
        assert_eq!(rendered.prefix_token_ids, [2], "{name}");
    }
}

/// `conv_template` of a published Llama-3 MLC model's `mlc-chat-config.json`, as MLC writes it.
fn published_llama3_object() -> Value {
    json!({
        "name": "llama-3",
        "system_template": "<|start_header_id|>system<|end_header_id|>\n\n{system_message}<|eot_id|>",
        "system_message": "You are a helpful, respectful and honest assistant.",
        "system_prefix_token_ids": [128000],
        "add_role_after_system_message": true,
        "roles": {
            "user": "<|start_header_id|>user",
            "assistant": "<|start_header_id|>assistant"
        },
        "role_templates": {
            "user": "{user_message}",
            "assistant": "{assistant_message}",
            "tool": "{tool_message}"
        },
        "messages": [],
        "seps": ["<|eot_id|>"],
        "role_content_sep": "<|end_header_id|>\n\n",
        "role_empty_sep": "<|end_header_id|>\n\n",
        "stop_str": ["<|end_of_text|>", "<|eot_id|>"],
        "stop_token_ids": [128001, 128009],
        "function_string": "",
        "use_function_calling": false
    })
}

#[test]
fn full_object_renders_like_the_builtin() {
    let parsed = ConvTemplate::from_config_value(&published_llama3_object()).unwrap();
    assert_eq!(parsed, builtin("llama-3"));
    assert_eq!(render(&parsed, conversation()).text, LLAMA3_EXPECTED);
    // A name resolves through the registry.
    assert_eq!(
        ConvTemplate::from_config_value(&json!("llama-3")).unwrap(),
        parsed
    );
}

#[test]
fn to_json_is_mlc_object() {
    let mut expected = published_llama3_object();
    expected["strip_reasoning_in_history"] = json!(false);
    assert_eq!(builtin("llama-3").to_json(), expected);
    // Fields MLC leaves out when None are absent, not null.
    let qwen = builtin("qwen2").to_json();
    assert!(qwen.get("system_prefix_token_ids").is_none());
    assert_eq!(qwen["strip_reasoning_in_history"], json!(false));
    assert_eq!(
        builtin("qwen3").to_json()["strip_reasoning_in_history"],
        json!(true)
    );
}

#[test]
fn missing_fields_take_mlc_defaults() {
    let parsed = ConvTemplate::from_config_value(&json!({
        "roles": {"user": "U", "assistant": "A"},
        "seps": ["|"],
        "system_prefix_token_ids": null,
        "some_future_field": 1
    }))
    .unwrap();
    assert_eq!(parsed.system_template, "{system_message}");
    assert!(parsed.add_role_after_system_message);
    assert_eq!(parsed.role_templates.get("tool"), Some("{tool_message}"));
    let rendered = render(&parsed, json!([{"role": "user", "content": "x"}]));
    assert_eq!(rendered.text, "Ux|A");
    assert!(rendered.prefix_token_ids.is_empty());
}

#[test]
fn without_system_message_the_default_is_used() {
    // qwen2.py: system_message="You are a helpful assistant."
    let rendered = render(
        &builtin("qwen2"),
        json!([{"role": "user", "content": "Hi."}]),
    );
    assert_eq!(
        rendered.text,
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\nHi.<|im_end|>\n\
         <|im_start|>assistant\n"
    );
    // llama.py: llama-2 puts the default system prompt before the first user message, no role prefix.
    let rendered = render(
        &builtin("llama-2"),
        json!([{"role": "user", "content": "Hi."}]),
    );
    assert_eq!(
        rendered.text,
        "[INST] <<SYS>>\nYou are a helpful, respectful and honest assistant.\n<</SYS>>\n\nHi. [/INST] "
    );
}

/// A template whose separators, role separators and role texts all differ, so each shows where used.
fn marked_template() -> ConvTemplate {
    ConvTemplate::from_config_value(&json!({
        "name": "marked",
        "system_template": "<sys>{system_message}</sys>",
        "roles": {"user": "<u>", "assistant": "<a>", "tool": "<t>"},
        "seps": ["|after-user|", "|after-assistant|"],
        "role_content_sep": ":",
        "role_empty_sep": "=",
        "role_templates": {"user": "[{user_message}]"}
    }))
    .unwrap()
}

#[test]
fn two_seps_alternate_and_role_empty_sep_ends_the_prompt() {
    let messages = json!([
        {"role": "user", "content": "q1"},
        {"role": "assistant", "content": "r1"},
        {"role": "user", "content": "q2"},
        {"role": "assistant", "content": "r2"},
        {"role": "tool", "content": "t"}
    ]);
    let rendered = render(&marked_template(), messages);
    assert_eq!(
        rendered.text,
        "<sys></sys><u>:[q1]|after-user|<a>:r1|after-assistant|<u>:[q2]|after-user|\
         <a>:r2|after-assistant|<t>:t|after-user|<a>="
    );
}

#[test]
fn no_generation_prompt() {
    let messages = json!([{"role": "user", "content": "q"}]);
    let text = marked_template().render(&messages, false).unwrap().text;
    assert_eq!(text, "<sys></sys><u>:[q]|after-user|");
    let text = builtin("llama-3").render(&messages, false).unwrap().text;
    assert_eq!(
        text,
        "<|start_header_id|>system<|end_header_id|>\n\n\
         You are a helpful, respectful and honest assistant.<|eot_id|>\
         <|start_header_id|>user<|end_header_id|>\n\nq<|eot_id|>"
    );
}

#[test]
fn tool_messages_use_the_tool_role() {
    // llama.py: llama-3_1 maps the tool role to ipython.
    let messages = json!([
        {"role": "user", "content": "Weather?"},
        {"role": "tool", "content": "{\"temp\": 20}", "tool_call_id": "call_0"}
    ]);
    let rendered = render(&builtin("llama-3_1"), messages.clone());
    assert!(rendered.text.ends_with(
        "<|start_header_id|>user<|end_header_id|>\n\nWeather?<|eot_id|>\
         <|start_header_id|>ipython<|end_header_id|>\n\n{\"temp\": 20}<|eot_id|>\
         <|start_header_id|>assistant<|end_header_id|>\n\n"
    ));
    // llama-3 has no tool role: MLC refuses the message.
    let err = builtin("llama-3").render(&messages, true).unwrap_err();
    let (field, message) = bad_request_field(err);
    assert_eq!(field, "messages");
    assert!(
        message.contains("Role \"tool\" is not a supported role"),
        "{message}"
    );
    assert!(message.contains("\"user\", \"assistant\""), "{message}");
}

#[test]
fn developer_is_system_and_text_parts_are_rendered_per_part() {
    let messages = json!([
        {"role": "developer", "content": [{"type": "text", "text": "Be brief."}]},
        {"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]}
    ]);
    // Each text part goes through the role template on its own, as in MLC's as_prompt.
    let rendered = render(&marked_template(), messages);
    assert_eq!(
        rendered.text,
        "<sys>Be brief.</sys><u>:[a][b]|after-user|<a>="
    );
}

#[test]
fn system_message_not_first_is_rejected() {
    let messages = json!([
        {"role": "user", "content": "Hi."},
        {"role": "system", "content": "Be brief."}
    ]);
    let (field, message) = bad_request_field(builtin("qwen2").render(&messages, true).unwrap_err());
    assert_eq!(field, "messages");
    assert_eq!(
        message,
        "System prompt at position 1 in the message list is invalid."
    );
}

#[test]
fn malformed_messages_are_bad_requests() {
    let cases = [
        (json!({"role": "user"}), "messages"),
        (json!([{"content": "x"}]), "messages[0]"),
        (
            json!([{"role": "user", "content": 3}]),
            "messages[0].content",
        ),
        (
            json!([{"role": "user", "content": [{"type": "image_url", "image_url": "x"}]}]),
            "messages[0].content",
        ),
        (
            json!([{"role": "assistant", "content": null,
                    "tool_calls": [{"type": "function", "function": {"name": "f", "arguments": "{}"}}]}]),
            "messages[0].tool_calls",
        ),
    ];
    for (messages, expected_field) in cases {
        let err = builtin("qwen2").render(&messages, true).unwrap_err();
        assert_eq!(bad_request_field(err).0, expected_field, "{messages}");
    }
}

#[test]
fn qwen3_strips_reasoning_from_earlier_turns_only() {
    // qwen3.py: strip_reasoning_in_history=True.
    let messages = json!([
        {"role": "user", "content": "2+2?"},
        {"role": "assistant", "content": "<think>\nadd them\n</think>\n\n4"},
        {"role": "user", "content": "3+3?"},
        {"role": "assistant", "content": "<think>\nagain\n</think>\n\n6"}
    ]);
    let text = builtin("qwen3").render(&messages, false).unwrap().text;
    assert_eq!(
        text,
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n\
         <|im_start|>user\n2+2?<|im_end|>\n<|im_start|>assistant\n4<|im_end|>\n\
         <|im_start|>user\n3+3?<|im_end|>\n\
         <|im_start|>assistant\n<think>\nagain\n</think>\n\n6<|im_end|>\n"
    );
    // qwen2 keeps everything.
    let text = builtin("qwen2").render(&messages, false).unwrap().text;
    assert!(text.contains("add them"));
}

#[test]
fn function_string_fills_the_last_placeholder() {
    let mut template = ConvTemplate::from_config_value(&json!({
        "system_template": "{system_message}",
        "system_message": "A{function_string}B{function_string}",
        "roles": {"user": "U", "assistant": "A"},
        "seps": [""]
    }))
    .unwrap();
    template.function_string = "[tools]".into();
    let text = render(&template, json!([{"role": "user", "content": "x"}])).text;
    // "A{function_string}B{function_string}UxA": the last placeholder gets the string, others vanish.
    assert_eq!(text, "AB[tools]UxA");
}

#[test]
fn template_history_comes_before_the_request() {
    let template = ConvTemplate::from_config_value(&json!({
        "roles": {"user": "U:", "assistant": "A:"},
        "seps": ["\n"],
        "messages": [["user", "earlier"], ["assistant", "reply"]]
    }))
    .unwrap();
    let text = render(&template, json!([{"role": "user", "content": "now"}])).text;
    assert_eq!(text, "U:earlier\nA:reply\nU:now\nA:");
}

#[test]
fn unknown_template_name_lists_known_names() {
    let message =
        template_message(ConvTemplate::from_config_value(&json!("vicuna_v9")).unwrap_err());
    assert!(message.contains("vicuna_v9"), "{message}");
    for name in [
        "llama-3_1",
        "qwen2",
        "chatml",
        "mistral_default",
        "gemma3_instruction",
    ] {
        assert!(message.contains(name), "{message} lacks {name}");
    }
    assert!(ConvTemplate::builtin("vicuna_v9").is_none());
}

#[test]
fn wrong_field_types_name_the_field() {
    let base = published_llama3_object();
    let cases = [
        ("seps", json!("<|eot_id|>"), "conv_template.seps"),
        ("seps", json!([]), "conv_template.seps"),
        ("seps", json!(["a", "b", "c"]), "conv_template.seps"),
        (
            "stop_token_ids",
            json!(["128001"]),
            "conv_template.stop_token_ids",
        ),
        (
            "system_message",
            json!(null),
            "conv_template.system_message",
        ),
        (
            "add_role_after_system_message",
            json!("yes"),
            "conv_template.add_role_after_system_message",
        ),
        ("roles", json!({"user": 1}), "conv_template.roles.user"),
        ("role_templates", json!([]), "conv_template.role_templates"),
    ];
    for (key, value, expected) in cases {
        let mut object = base.clone();
        object[key] = value;
        let message = template_message(ConvTemplate::from_config_value(&object).unwrap_err());
        assert!(message.starts_with(expected), "{key}: {message}");
    }
    let mut object = base;
    object.as_object_mut().unwrap().remove("roles");
    let message = template_message(ConvTemplate::from_config_value(&object).unwrap_err());
    assert!(message.starts_with("conv_template.roles"), "{message}");
    let message = template_message(ConvTemplate::from_config_value(&json!(3)).unwrap_err());
    assert!(message.contains("template name or an object"), "{message}");
}
