"""MLC's debug options of a request (`extra_body["debug_config"]`), importable from where MLC keeps
them (`mlc_llm.protocol.debug_protocol.DebugConfig`)."""

from typing import Any, Dict, Literal, Optional

from pydantic import BaseModel, ConfigDict, StrictBool


class DebugConfig(BaseModel):
    """MLC's `extra_body["debug_config"]`, with the fields MLC defines. `ignore_eos` has an effect;
    `pinned_system_prompt` (a prefix-cache hint) and `grammar_execution_mode` (how MLC's grammar
    engine advances: both modes produce the same text) are accepted and change nothing here; the
    special requests and disaggregated serving (`special_request`, `disagg_config`) are refused."""

    model_config = ConfigDict(extra="forbid")  # a misspelt option fails loudly

    ignore_eos: StrictBool = False
    pinned_system_prompt: StrictBool = False
    special_request: Optional[Literal["query_engine_metrics"]] = None
    grammar_execution_mode: Literal["constraint", "jump_forward"] = "jump_forward"
    disagg_config: Optional[Dict[str, Any]] = None
