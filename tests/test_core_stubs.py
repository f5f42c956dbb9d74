"""The checked-in stubs `mlc_llm/_core.pyi` describe the native module exactly: every public name and
every Engine method in the stubs exists in the built module, and nothing public is missing from them."""

import ast
import inspect
import os

import mlc_llm
from mlc_llm import _core

STUB = os.path.join(os.path.dirname(mlc_llm.__file__), "_core.pyi")


def _stub_names():
    tree = ast.parse(open(STUB).read())
    top, methods = set(), set()
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.ClassDef)):
            top.add(node.name)
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            top.add(node.target.id)
        if isinstance(node, ast.ClassDef) and node.name == "Engine":
            methods = {n.name for n in node.body if isinstance(n, ast.FunctionDef)}
    return top, methods


def test_stub_matches_native_module() -> None:
    top, methods = _stub_names()
    public = {n for n in dir(_core) if not n.startswith("_")} | {"__version__"}
    assert top == public, f"stub-only: {top - public}, module-only: {public - top}"
    engine_public = {n for n, _ in inspect.getmembers(_core.Engine) if not n.startswith("_")} | {"__init__"}
    assert methods == engine_public, f"stub-only: {methods - engine_public}, module-only: {engine_public - methods}"
