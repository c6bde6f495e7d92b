"""Flat config dataclasses filled from `rankloop.toml` and the command line.

Each stage has one flat `@dataclass` with a one-line docstring under every field (as CleanRL's
`Args`) and a `validate()` that fails early naming the field. This module reads those docstrings,
fills a dataclass from a TOML table, and writes the commented `rankloop.toml` that `rankloop init`
creates, so the settings are documented in one place: the dataclass.
"""

from __future__ import annotations

import ast
import dataclasses
import functools
import importlib
import importlib.util
import inspect
import itertools
import json
import sys
import textwrap
import types
import typing
from pathlib import Path


class ConfigError(ValueError):
    """A bad setting; the message names the section, the field and what is allowed."""


def load_function(spec: str, option: str):
    """`module:function` (or `path/to/file.py:function`) -> the function it names.

    The one loader of user code named on the command line (PPO's `--reward-fn`, simulate's
    `--oracle`); `option` is the flag the user typed, so each error names it.
    """
    if ":" not in spec:
        raise ConfigError(f"{option} {spec!r}: expected module:function (e.g. my_rewards:score)")
    module_name, func_name = spec.rsplit(":", 1)
    try:
        if module_name.endswith(".py"):
            path = Path(module_name)
            mod_spec = importlib.util.spec_from_file_location(path.stem, path)
            if mod_spec is None or not path.exists():
                raise ImportError(f"no file {path}")
            module = importlib.util.module_from_spec(mod_spec)
            mod_spec.loader.exec_module(module)
        else:
            if "" not in sys.path:  # `python -m` semantics: the current folder is importable
                sys.path.insert(0, "")
            module = importlib.import_module(module_name)
    except ImportError as e:
        raise ConfigError(f"{option} {spec!r}: cannot import {module_name!r}: {e}") from e
    fn = getattr(module, func_name, None)
    if not callable(fn):
        raise ConfigError(f"{option} {spec!r}: {module_name} has no function {func_name!r}")
    return fn


@functools.cache
def field_docs(cls) -> dict[str, str]:
    """The docstring written under each field of dataclass `cls` (read from its source)."""
    tree = ast.parse(textwrap.dedent(inspect.getsource(cls)))
    body = tree.body[0].body
    docs = {}
    for node, nxt in itertools.pairwise(body):
        if (
            isinstance(node, ast.AnnAssign)
            and isinstance(node.target, ast.Name)
            and isinstance(nxt, ast.Expr)
            and isinstance(nxt.value, ast.Constant)
            and isinstance(nxt.value.value, str)
        ):
            docs[node.target.id] = " ".join(nxt.value.value.split())
    return docs


def _allowed(tp) -> tuple[type, ...]:
    """The runtime types a TOML value may have for annotation `tp`."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        return tuple(t for a in typing.get_args(tp) for t in _allowed(a))
    if tp is type(None):
        return (type(None),)
    if tp is float:
        return (float, int)
    if origin is typing.Literal:
        return tuple({type(a) for a in typing.get_args(tp)})
    return (origin or tp,)


def from_table(cls, table: dict, section: str):
    """Build `cls` from a TOML table; unknown keys and wrong types are errors naming the key."""
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    for key, value in table.items():
        if key not in names:
            raise ConfigError(
                f"[{section}] has no setting {key!r}; known: {', '.join(sorted(names))}"
            )
        ok = _allowed(hints[key])
        if not isinstance(value, ok) or (isinstance(value, bool) and bool not in ok):
            raise ConfigError(f"[{section}] {key} = {value!r}: expected {hints[key]}")
    obj = cls(**table)
    if hasattr(obj, "validate"):
        obj.validate()
    return obj


def replace(obj, **overrides):
    """`dataclasses.replace` that skips None overrides (unset CLI options) and re-validates."""
    obj = dataclasses.replace(obj, **{k: v for k, v in overrides.items() if v is not None})
    if hasattr(obj, "validate"):
        obj.validate()
    return obj


def _toml_value(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, str):
        return json.dumps(v, ensure_ascii=False)
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    raise TypeError(f"cannot write {v!r} to TOML")


def render_toml(sections: dict[str, object], header: str = "") -> str:
    """A commented TOML document: every field with its docstring and its value.

    Fields whose value is None are written commented out (TOML has no null).
    """
    out = [header.rstrip() + "\n"] if header else []
    for section, obj in sections.items():
        docs = field_docs(type(obj))
        cls_doc = (type(obj).__doc__ or "").strip().splitlines()[0]
        out.append(f"\n[{section}]\n# {cls_doc}\n")
        for f in dataclasses.fields(obj):
            for line in textwrap.wrap(docs.get(f.name, ""), 96):
                out.append(f"# {line}\n")
            value = getattr(obj, f.name)
            if value is None:
                out.append(f"# {f.name} =\n")
            else:
                out.append(f"{f.name} = {_toml_value(value)}\n")
    return "".join(out)
