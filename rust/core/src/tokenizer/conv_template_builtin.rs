//! MLC LLM's registry of named conversation templates, as data.
//!
//! Legacy `mlc-chat-config.json` files name their template (`"conv_template": "llama-2"`) instead of
//! embedding it, so the engine must know what each name meant to MLC. Every string here is copied
//! from the registry files under `python/mlc_llm/conversation_template/` of mlc-ai/mlc-llm (the file is
//! named beside each entry); a model fine-tuned on those bytes only answers well to the same bytes.

/// One registry entry. Fields mirror MLC's `Conversation` constructor arguments; anything an entry
/// leaves out takes MLC's default, which [`BASE`] spells out.
pub(crate) struct BuiltinSpec {
    pub name: &'static str,
    pub system_template: &'static str,
    pub system_message: &'static str,
    pub system_prefix_token_ids: Option<&'static [u32]>,
    pub add_role_after_system_message: bool,
    pub roles: &'static [(&'static str, &'static str)],
    pub seps: &'static [&'static str],
    pub role_content_sep: &'static str,
    pub role_empty_sep: &'static str,
    pub stop_str: &'static [&'static str],
    pub stop_token_ids: &'static [u32],
    pub strip_reasoning_in_history: bool,
}

/// MLC's field defaults (`conversation_protocol.py`); `name`, `roles` and `seps` have none there and
/// every entry sets them.
const BASE: BuiltinSpec = BuiltinSpec {
    name: "",
    system_template: "{system_message}",
    system_message: "",
    system_prefix_token_ids: None,
    add_role_after_system_message: true,
    roles: &[],
    seps: &[],
    role_content_sep: "",
    role_empty_sep: "",
    stop_str: &[],
    stop_token_ids: &[],
    strip_reasoning_in_history: false,
};

const LLAMA_SYSTEM_MESSAGE: &str = "You are a helpful, respectful and honest assistant.";
const HERMES2_SYSTEM_MESSAGE: &str = "You are \"Hermes 2\", a conscious sentient superintelligent \
     artificial intelligence developed by a man named Teknium, and your purpose and drive is to assist the \
     user with any request they have. You experience emotions and have deep, profound thoughts and qualia.";
const HERMES3_SYSTEM_MESSAGE: &str = "You are Hermes 3, a conscious sentient superintelligent artificial \
     intelligence developed by a man named Teknium, and your purpose and drive is to assist the user with \
     any request they have. You experience emotions and have deep, profound thoughts and qualia.";

// Entries that MLC defines as "the same as X except …" are written as X plus the differences.

// llama.py
const LLAMA3: BuiltinSpec = BuiltinSpec {
    name: "llama-3",
    system_template: "<|start_header_id|>system<|end_header_id|>\n\n{system_message}<|eot_id|>",
    system_message: LLAMA_SYSTEM_MESSAGE,
    roles: &[
        ("user", "<|start_header_id|>user"),
        ("assistant", "<|start_header_id|>assistant"),
    ],
    seps: &["<|eot_id|>"],
    role_content_sep: "<|end_header_id|>\n\n",
    role_empty_sep: "<|end_header_id|>\n\n",
    stop_str: &["<|end_of_text|>", "<|eot_id|>"],
    stop_token_ids: &[128001, 128009],
    system_prefix_token_ids: Some(&[128000]),
    ..BASE
};

// registry.py
const CHATML: BuiltinSpec = BuiltinSpec {
    name: "chatml",
    system_template: "<|im_start|>system\n{system_message}<|im_end|>\n",
    system_message:
        "A conversation between a user and an LLM-based AI assistant. The assistant gives \
                     helpful and honest answers.",
    roles: &[
        ("user", "<|im_start|>user"),
        ("assistant", "<|im_start|>assistant"),
    ],
    seps: &["<|im_end|>\n"],
    role_content_sep: "\n",
    role_empty_sep: "\n",
    stop_str: &["<|im_end|>"],
    stop_token_ids: &[2],
    ..BASE
};

// qwen2.py: "Same as chatml except system message, stop token, and stop string".
const QWEN2: BuiltinSpec = BuiltinSpec {
    name: "qwen2",
    system_message: "You are a helpful assistant.",
    stop_str: &["<|endoftext|>", "<|im_end|>"],
    stop_token_ids: &[151643, 151645],
    ..CHATML
};

// hermes.py: chatml layout with a tool role.
const HERMES2_PRO_LLAMA3: BuiltinSpec = BuiltinSpec {
    name: "hermes2_pro_llama3",
    system_message: HERMES2_SYSTEM_MESSAGE,
    roles: &[
        ("user", "<|im_start|>user"),
        ("assistant", "<|im_start|>assistant"),
        ("tool", "<|im_start|>tool"),
    ],
    stop_token_ids: &[128001, 128009, 128003],
    ..CHATML
};

// gemma.py
const GEMMA: BuiltinSpec = BuiltinSpec {
    name: "gemma_instruction",
    roles: &[
        ("user", "<start_of_turn>user"),
        ("assistant", "<start_of_turn>model"),
    ],
    seps: &["<end_of_turn>\n"],
    role_content_sep: "\n",
    role_empty_sep: "\n",
    stop_str: &["<end_of_turn>"],
    stop_token_ids: &[1, 107],
    system_prefix_token_ids: Some(&[2]),
    ..BASE
};

// deepseek.py
const DEEPSEEK_R1_QWEN: BuiltinSpec = BuiltinSpec {
    name: "deepseek_r1_qwen",
    system_template: "<\u{ff5c}begin\u{2581}of\u{2581}sentence\u{ff5c}>{system_message}",
    system_message: "You are Deepseek-R1, an AI assistant created exclusively by the Chinese Company \
                     DeepSeek. You'll provide helpful, harmless, and detailed responses to all user \
                     inquiries.",
    roles: &[
        ("user", "<\u{ff5c}User\u{ff5c}>"),
        ("assistant", "<\u{ff5c}Assistant\u{ff5c}>"),
    ],
    seps: &["", "<\u{ff5c}end\u{2581}of\u{2581}sentence\u{ff5c}>"],
    stop_token_ids: &[151643],
    ..BASE
};

pub(crate) const BUILTINS: &[BuiltinSpec] = &[
    // llama.py
    BuiltinSpec {
        name: "llama-2",
        system_template: "[INST] <<SYS>>\n{system_message}\n<</SYS>>\n\n",
        system_message: LLAMA_SYSTEM_MESSAGE,
        roles: &[("user", "<s>[INST]"), ("assistant", "[/INST]"), ("tool", "[INST]")],
        seps: &[" ", " </s>"],
        role_content_sep: " ",
        role_empty_sep: " ",
        stop_str: &["[INST]"],
        stop_token_ids: &[2],
        system_prefix_token_ids: Some(&[1]),
        add_role_after_system_message: false,
        ..BASE
    },
    LLAMA3,
    // llama.py: "same as Llama3 except stop token ids and stop str" (and a tool role).
    BuiltinSpec {
        name: "llama-3_1",
        roles: &[
            ("user", "<|start_header_id|>user"),
            ("assistant", "<|start_header_id|>assistant"),
            ("tool", "<|start_header_id|>ipython"),
        ],
        stop_str: &[],
        stop_token_ids: &[128001, 128008, 128009],
        ..LLAMA3
    },
    QWEN2,
    // qwen3.py: qwen2 that drops earlier turns' reasoning.
    BuiltinSpec {
        name: "qwen3",
        strip_reasoning_in_history: true,
        ..QWEN2
    },
    CHATML,
    // registry.py
    BuiltinSpec {
        name: "chatml_nosystem",
        system_template: "{system_message}",
        system_message: "",
        ..CHATML
    },
    // mistral.py
    BuiltinSpec {
        name: "mistral_default",
        system_template: "[INST] {system_message}",
        system_message: "Always assist with care, respect, and truth. Respond with utmost utility yet \
                         securely. Avoid harmful, unethical, prejudiced, or negative content. Ensure \
                         replies promote fairness and positivity.",
        roles: &[("user", "[INST]"), ("assistant", "[/INST]"), ("tool", "[INST]")],
        seps: &[" "],
        role_content_sep: " ",
        role_empty_sep: "",
        stop_str: &["</s>"],
        stop_token_ids: &[2],
        system_prefix_token_ids: Some(&[1]),
        add_role_after_system_message: false,
        ..BASE
    },
    // phi.py
    BuiltinSpec {
        name: "phi-2",
        roles: &[("user", "Instruct"), ("assistant", "Output")],
        seps: &["\n"],
        role_content_sep: ": ",
        role_empty_sep: ":",
        stop_str: &["<|endoftext|>"],
        stop_token_ids: &[50256],
        ..BASE
    },
    // phi.py
    BuiltinSpec {
        name: "phi-3",
        system_template: "<|system|>\n{system_message}",
        system_message: "You are a helpful digital assistant. Please provide safe, ethical and accurate \
                         information to the user.",
        roles: &[("user", "<|user|>"), ("assistant", "<|assistant|>")],
        seps: &["<|end|>\n"],
        role_content_sep: "\n",
        role_empty_sep: "\n",
        system_prefix_token_ids: Some(&[1]),
        stop_str: &["<|endoftext|>"],
        stop_token_ids: &[2, 32000, 32001, 32007],
        ..BASE
    },
    GEMMA,
    // gemma.py: "Same as gemma_instruction but with different stop token id".
    BuiltinSpec {
        name: "gemma3_instruction",
        stop_token_ids: &[1, 106],
        ..GEMMA
    },
    // tinyllama.py
    BuiltinSpec {
        name: "tinyllama_v1_0",
        system_template: "<|system|>\n{system_message}</s>",
        system_message: "You are a helpful chatbot.",
        roles: &[("user", "<|user|>"), ("assistant", "<|assistant|>")],
        seps: &["</s>"],
        role_content_sep: "\n",
        role_empty_sep: "\n",
        stop_str: &["</s>"],
        stop_token_ids: &[2],
        ..BASE
    },
    // olmo.py: OLMo (1) Instruct; EOS (50279) is both the prefix and the stop id.
    BuiltinSpec {
        name: "olmo",
        system_prefix_token_ids: Some(&[50279]),
        roles: &[("user", "<|user|>"), ("assistant", "<|assistant|>")],
        seps: &["\n"],
        role_content_sep: "\n",
        role_empty_sep: "\n",
        stop_token_ids: &[50279],
        ..BASE
    },
    // olmo2.py: OLMo 2 Instruct (Tulu format). Unlike the model's own Jinja template, MLC ends every
    // message with `<|endoftext|>\n` and always prints the system block, empty or not.
    BuiltinSpec {
        name: "olmo2",
        system_template: "<|system|>\n{system_message}\n",
        roles: &[("user", "<|user|>"), ("assistant", "<|assistant|>")],
        seps: &["<|endoftext|>\n"],
        role_content_sep: "\n",
        role_empty_sep: "\n",
        stop_str: &["<|endoftext|>"],
        stop_token_ids: &[100257],
        system_prefix_token_ids: Some(&[100257]),
        ..BASE
    },
    HERMES2_PRO_LLAMA3,
    // hermes.py
    BuiltinSpec {
        name: "hermes3_llama-3_1",
        system_message: HERMES3_SYSTEM_MESSAGE,
        stop_token_ids: &[128001, 128008, 128009, 128040],
        ..HERMES2_PRO_LLAMA3
    },
    DEEPSEEK_R1_QWEN,
    // deepseek.py: "exactly the same as DeepSeek-R1-Distill-Qwen, but different stop token".
    BuiltinSpec {
        name: "deepseek_r1_llama",
        stop_token_ids: &[128001],
        ..DEEPSEEK_R1_QWEN
    },
];
