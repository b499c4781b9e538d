"""Presets: params files that name only the settings that differ from the defaults.

An example configuration (`params-aerial.yaml`, a user's own `params-lab.yaml`) holds a few keys in
`params.yaml`'s sections. Every stage's `--params FILE` reads such a file directly (each key it does
not name takes its default, and the defaults are `params.yaml`'s shipped values). For `dvc repro`
and `dvc exp run`, which read `params.yaml` itself, `apply_presets` writes the defaults with the
presets' keys over them into `params.yaml`, keeping its comments, so `git diff params.yaml` shows
exactly what the preset changed.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel
from ruamel.yaml import YAML
from ruamel.yaml.comments import CommentedMap, CommentedSeq

from segpipe.config import Params, Section, load_params, parse_params
from segpipe.errors import SegpipeError

Flat = dict[tuple[str, ...], Any]


def leaves(model: type[BaseModel], data: Mapping[str, Any], prefix: tuple[str, ...] = ()) -> Iterator[tuple[tuple[str, ...], Any]]:
    """The settings of `data` (a mapping shaped like `model`) by key path.

    A nested section (`train.loss`) is walked into; a mapping-valued setting (`data.mask_colors`)
    is one leaf, because a preset replaces it whole: its classes are the preset's, not a mix.
    """
    for name, value in data.items():
        field = model.model_fields.get(name)
        sub = field.annotation if field is not None else None
        if isinstance(sub, type) and issubclass(sub, Section) and isinstance(value, Mapping):
            yield from leaves(sub, value, (*prefix, name))
        else:
            yield (*prefix, name), value


def read_preset(path: Path) -> Flat:
    """The keys a preset names, typed and normalised as the config reads them (tuples as lists).

    The preset is checked as a whole params file (unknown keys, wrong types, classes against
    colours), every message naming `path`.
    """
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise SegpipeError(f"{path}: preset file not found") from None
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise SegpipeError(f"{path}: not valid YAML: {exc}") from None
    typed = parse_params(data, str(path)).model_dump(mode="json")
    named = dict(leaves(Params, data or {}))
    return {key: _get(typed, key) for key in named}


def apply_presets(params_path: Path, presets: Sequence[Path]) -> list[tuple[str, Any, Any]]:
    """Rewrite `params_path` as the defaults with each preset's keys over them, in order.

    Keys no preset names go back to their defaults, so applying a preset is repeatable and two
    presets never leave a mix. Comments and the keys' order are kept. The file is replaced only
    once the result validates. Returns the changes as (flat key, old value, new value).
    """
    target: Flat = dict(leaves(Params, Params().model_dump(mode="json")))
    for preset in presets:
        target.update(read_preset(preset))
    names = ", ".join(str(p) for p in presets)
    parse_params(_nest(target), names)  # presets that pass alone may still clash together

    loader = YAML()  # round-trip: comments, key order and quoting survive
    loader.width = 4096
    loader.preserve_quotes = True
    try:
        document = loader.load(params_path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise SegpipeError(f"{params_path}: params file not found (pass --params PATH)") from None
    if document is None:
        document = CommentedMap()
    changes = []
    for key, value in target.items():
        old = _get(document, key)
        if old != value or isinstance(old, bool) != isinstance(value, bool):  # 1 == True in Python
            _set(document, key, _as_yaml(value))
            changes.append((".".join(key), old, value))
    if changes:
        _write(loader, document, params_path)
    return changes


def _write(loader: YAML, document: CommentedMap, path: Path) -> None:
    temporary = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with temporary.open("w", encoding="utf-8") as handle:
            loader.dump(document, handle)
        load_params(temporary)  # never leave a params.yaml the stages would refuse
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)


def _get(tree: Any, key: tuple[str, ...]) -> Any:
    for part in key:
        if not isinstance(tree, Mapping) or part not in tree:
            return None
        tree = tree[part]
    return tree


def _set(tree: CommentedMap, key: tuple[str, ...], value: Any) -> None:
    for part in key[:-1]:
        if not isinstance(tree.get(part), Mapping):
            tree[part] = CommentedMap()
        tree = tree[part]
    tree[key[-1]] = value


def _nest(flat: Flat) -> dict:
    nested: dict = {}
    for key, value in flat.items():
        tree = nested
        for part in key[:-1]:
            tree = tree.setdefault(part, {})
        tree[key[-1]] = value
    return nested


def _as_yaml(value: Any) -> Any:
    """Lists in flow style (`[a, b]`), as params.yaml writes them; mappings in block style."""
    if isinstance(value, list):
        seq = CommentedSeq(value)
        seq.fa.set_flow_style()
        return seq
    if isinstance(value, Mapping):
        return CommentedMap(value)
    return value
