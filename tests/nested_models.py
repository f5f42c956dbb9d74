"""A pydantic model with a nested model, the shape every client library sends for structured tools
(`openai.pydantic_function_tool`, instructor, LangChain): the nested model is a root-relative `$ref`
into the parameters' `$defs`."""

from typing import List

import pydantic


class Person(pydantic.BaseModel):
    name: str = pydantic.Field(max_length=20)
    age: int


class Team(pydantic.BaseModel):
    lead: Person
    members: List[Person] = pydantic.Field(max_length=2)
