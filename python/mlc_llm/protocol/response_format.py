"""The output constraint of a request: OpenAI's `response_format` (and MLC's older spelling of it),
checked at the door (a schema no output can follow is a 400) and turned into the engine's grammar."""

import json
import re
from typing import Any, Dict, Literal, Optional, Union

from pydantic import BaseModel, ConfigDict, Field, StrictBool, field_validator

from .errors import BadRequestError
from .json_schema import check_json_schema

# OpenAI's rule for function and response-schema names.
_NAME_PATTERN = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


def check_name(value: str) -> str:
    if not _NAME_PATTERN.match(value):
        raise ValueError(f"name {value!r} must be 1 to 64 letters, digits, '_' or '-'")
    return value


class JSONSchemaFormat(BaseModel):
    """OpenAI's `response_format.json_schema` object."""

    name: str
    description: Optional[str] = None
    schema_: Optional[Dict[str, Any]] = Field(default=None, alias="schema")
    strict: Optional[StrictBool] = None

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    @field_validator("name")
    @classmethod
    def _valid_name(cls, value: str) -> str:
        return check_name(value)

    @field_validator("schema_")
    @classmethod
    def _valid_schema(cls, value: Optional[Dict[str, Any]]) -> Optional[Dict[str, Any]]:
        if value is not None:
            check_json_schema(value, "schema")
        return value


class ResponseFormat(BaseModel):
    """OpenAI's `{"type": "json_schema", "json_schema": {...}}`, and MLC's older
    `{"type": "json_object", "schema": ...}` where the schema may also be a JSON string."""

    type: Literal["text", "json_object", "json_schema"] = "text"
    json_schema: Optional[JSONSchemaFormat] = None
    schema_: Optional[Union[Dict[str, Any], str]] = Field(default=None, alias="schema")

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    @field_validator("schema_")
    @classmethod
    def _valid_schema(cls, value: Optional[Union[Dict[str, Any], str]]) -> Optional[Union[Dict[str, Any], str]]:
        if isinstance(value, str):
            try:
                parsed = json.loads(value)
            except ValueError:
                raise ValueError("schema is a string but not JSON") from None
            check_json_schema(parsed, "schema")
        elif value is not None:
            check_json_schema(value, "schema")
        return value

    def check(self) -> None:
        if self.type == "json_schema" and self.json_schema is None:
            raise BadRequestError("response_format of type 'json_schema' needs a 'json_schema' object", "response_format")
        if self.type != "json_schema" and self.json_schema is not None:
            raise BadRequestError("'json_schema' is only allowed with type 'json_schema'", "response_format")
        if self.type == "text" and self.schema_ is not None:
            raise BadRequestError("a schema is not allowed with type 'text'", "response_format")

    def grammar(self) -> Optional[Dict[str, Any]]:
        """The engine's grammar spec (SamplingParams "grammar") enforcing this format while
        decoding, or None for free text."""
        if self.type == "text":
            return None
        schema = self.schema_dict()
        return {"type": "json_object"} if schema is None else {"type": "json_schema", "schema": schema}

    def schema_dict(self) -> Optional[Dict[str, Any]]:
        """The JSON schema to constrain the output to, if any (both spellings)."""
        if self.json_schema is not None:
            return self.json_schema.schema_
        if isinstance(self.schema_, str):
            return dict(json.loads(self.schema_))
        return self.schema_
