"""Loading configs: plain data -> checked dataclasses, files -> plain data.

`from_dict` builds any config dataclass from plain data, refusing unknown
keys and values of the wrong type with a message naming the dotted field.
`load` / `from_text` read a .toml or .json config within the input limits
(size, nesting depth; see backend.config.limits); `from_data` starts from the
preset a config names and merges its overrides (`merge`).

`parse_text` and `check_plain` are the hardened parsing every input path
shares (configs here, schedules in backend.schedule): they refuse, naming
where, what would otherwise crash later: nesting deep enough to exhaust the
stack, integers beyond 64 bits, text that cannot be encoded as UTF-8, a
JSON key given twice (which json.loads would settle silently, last wins).
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
import reprlib
import tomllib
import types
import typing
from pathlib import Path

from backend.config.limits import Limits, confine_paths
from backend.config.schema import INT64, ConfigError, ControllerConfig, RunConfig


class InputError(ValueError):
    """Text or data that cannot be parsed safely. `field` is the dotted path
    at fault, or None when it is the whole text (callers then prefix the
    input's name)."""

    def __init__(self, message: str, field: str | None = None):
        super().__init__(f"{field}: {message}" if field is not None else message)
        self.field = field


# -- showing values in messages ------------------------------------------------------

_SHOW = reprlib.Repr()
_SHOW.maxstring, _SHOW.maxother, _SHOW.maxlist, _SHOW.maxdict = 60, 60, 4, 4


def show(value) -> str:
    """A short, printable rendering of any value for an error message (huge
    ints, long strings and lone surrogates included)."""
    if isinstance(value, int) and not isinstance(value, bool) and value.bit_length() > 64:
        return f"an integer of {value.bit_length()} bits"
    try:
        return _SHOW.repr(value)
    except (ValueError, RecursionError):  # an int too long for str(), nesting too deep
        return f"a {type(value).__name__}"


def key_path(path: str, key) -> str:
    """`path.key`, the key shown as written when it is short and printable."""
    k = key if isinstance(key, str) and key.isprintable() and 0 < len(key) <= 64 else show(key)
    return f"{path}.{k}" if path else k


# -- hardened parsing ----------------------------------------------------------------

# Strings and comments hold brackets and dots that do not nest; the scan
# skips them. Each pattern is matched once, anchored where its string opens,
# so the scan is linear; an unterminated string ends it (the text is invalid
# and the parser will say where).
_TOKENS = {"json": re.compile(r'["\[\]{}]'), "toml": re.compile(r'"""|\'\'\'|["\'#\[\]{}=,.\n]')}
_SKIP = {
    "json": {'"': re.compile(r'(?:[^"\\]|\\.)*+"', re.S)},
    "toml": {
        '"""': re.compile(r'(?:[^"\\]|\\[\s\S]|"(?!""))*+"""'),
        "\'\'\'": re.compile(r"[\s\S]*?\'\'\'"),
        '"': re.compile(r'(?:[^"\\\n]|\\.)*+"'),
        "\'": re.compile(r"[^\'\n]*+\'"),
        "#": re.compile(r"[^\n]*"),
    },
}


def text_depth(text: str, fmt: str, limit: int | None = None) -> int:
    """The deepest nesting of JSON or TOML text, estimated without parsing
    (so 100,000 nested lists cost a scan, not the stack): bracket depth, and
    for TOML the parts of the longest dotted key (`a.b.c = 1` nests 3 deep,
    and tomllib's time grows with the square of the parts; a value's dots
    count too, which costs a float one level). Stops early once past
    `limit`."""
    tokens, skip = _TOKENS[fmt], _SKIP[fmt]
    depth = deepest = dots = 0
    pos = 0
    while limit is None or deepest <= limit:
        m = tokens.search(text, pos)
        if m is None:
            break
        tok, pos = m.group(), m.end()
        if tok in skip:
            end = skip[tok].match(text, pos)
            if end is None:
                break
            pos = end.end()
        elif tok == ".":
            dots += 1
        else:
            if tok in "[{":
                depth += 1
            elif tok in "]}":
                depth -= 1
            # dots between two delimiters: a dotted key (or one float's point)
            deepest = max(deepest, depth, dots + 1 if dots else 0)
            dots = 0
    return max(deepest, dots + 1 if dots else 0)


def parse_text(text: str | bytes, fmt: str, *, max_bytes: int, max_depth: int):
    """Parse JSON or TOML text within a size and depth limit; InputError
    otherwise (not UTF-8, too large, too deep, invalid, a 5,000-digit int,
    a key given twice in one object)."""
    size = len(text.encode("utf-8", "surrogatepass") if isinstance(text, str) else text)
    if size > max_bytes:
        raise InputError(f"the file is {size:,} bytes, above the limit of {max_bytes:,} bytes")
    kind = fmt.upper()
    if isinstance(text, bytes):
        try:
            text = text.decode("utf-8")
        except UnicodeDecodeError:
            raise InputError(f"not valid {kind}: the file is not UTF-8 text") from None
    if text_depth(text, fmt, max_depth) > max_depth:
        raise InputError(f"not valid {kind}: nested deeper than {max_depth} levels")
    try:
        data = (json.loads(text, parse_int=_json_int, object_pairs_hook=_json_object) if fmt == "json"
                else tomllib.loads(text))
    except (json.JSONDecodeError, tomllib.TOMLDecodeError) as e:
        raise InputError(f"not valid {kind}: {e}") from None
    except ValueError:  # tomllib: an int past str()'s 4,300-digit limit
        raise InputError(f"not valid {kind}: {_long_int_line(text)}") from None
    except RecursionError:  # nesting the scan did not see
        raise InputError(f"not valid {kind}: nested too deep to parse") from None
    check_plain(data, max_depth=max_depth)
    return data


class _LongInt:
    """A JSON integer too long to be one we accept, kept as its digit count
    so check_plain can name its field (int() of 5,000 digits would raise)."""

    def __init__(self, digits: str):
        self.digits = len(digits.lstrip("-"))


def _json_int(digits: str):
    return int(digits) if len(digits) <= 20 else _LongInt(digits)


class _DuplicateKey:
    """A JSON object that gives a key twice, kept so check_plain can name
    where (json.loads would keep the last value without a word; tomllib
    refuses a duplicate itself)."""

    def __init__(self, key: str):
        self.key = key


def _json_object(pairs: list[tuple[str, object]]):
    out = dict(pairs)
    if len(out) < len(pairs):
        seen = set()
        for k, _ in pairs:
            if k in seen:
                return _DuplicateKey(k)
            seen.add(k)
    return out


def _long_int_line(text: str) -> str:
    for n, line in enumerate(text.splitlines(), 1):
        m = re.search(r"(?<![\w.])[+-]?\d[\d_]{4000,}", line)
        if m:
            return f"line {n}: an integer of {len(m.group().replace('_', ''))} digits is outside 64-bit integers"
    return "an integer too long to read"


def check_plain(data, *, max_depth: int, path: str = "") -> None:
    """Refuse, naming the path, plain data deeper than max_depth, with an
    integer outside 64 bits, with a string (or key) that is not valid
    Unicode (a lone surrogate cannot be written as UTF-8), or (as parse_text
    reads JSON) with an object that gives a key twice. Iterative, so depth
    costs no stack."""
    stack = [(data, path, 0)]
    while stack:
        value, where, depth = stack.pop()
        if depth > max_depth:
            raise InputError(f"nested deeper than {max_depth} levels", where or "top level")
        if isinstance(value, str):
            _encodable(value, where)
        elif isinstance(value, bool):
            continue
        elif isinstance(value, int):
            if not -INT64 <= value < INT64:
                raise InputError(f"{show(value)} is outside 64-bit integers", where or "top level")
        elif isinstance(value, _LongInt):
            raise InputError(f"an integer of {value.digits} digits is outside 64-bit integers", where or "top level")
        elif isinstance(value, _DuplicateKey):
            raise InputError(f"key {show(value.key)} is given twice", where or "top level")
        elif isinstance(value, dict):
            for k, v in value.items():
                if isinstance(k, str):
                    _encodable(k, where, key=True)
                stack.append((v, key_path(where, k), depth + 1))
        elif isinstance(value, list):
            stack += [(v, f"{where}[{i}]", depth + 1) for i, v in enumerate(value)]


def _encodable(s: str, where: str, key: bool = False) -> None:
    try:
        s.encode("utf-8")
    except UnicodeEncodeError as e:
        what = "a key" if key else "text"
        raise InputError(f"{what} with a lone surrogate at position {e.start} cannot be stored as UTF-8",
                         where or "top level") from None


# -- plain data -> dataclasses ---------------------------------------------------------


def from_dict(data: dict, cls: type = RunConfig, path: str = "", *, limits: Limits | None = None,
              untrusted: bool = False) -> typing.Any:
    """Build a config dataclass from plain data, refusing unknown keys, values
    of the wrong type, integers outside 64 bits, unencodable text and deep
    nesting, with a message that names the field.

    untrusted: a RunConfig's data from someone who may not read files (an
    upload): every path it names must lie within the data roots, refused
    before the schema looks whether it exists (limits.confine_paths); the
    rest of limits.check_untrusted is the caller's, on the config built."""
    limits = limits or Limits.from_env()
    try:
        check_plain(data, max_depth=limits.max_depth, path=path)
    except InputError as e:
        raise ConfigError(str(e)) from None
    if untrusted:
        confine_paths(data)
    return _build(data, cls, path)


def _build(data, cls: type, path: str):
    if not isinstance(data, dict):
        raise ConfigError(f"{path or 'config'}: expected a table/object, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    legacy = getattr(cls, "LEGACY_KEYS", ())
    unknown = [k for k in data if k not in fields and k not in legacy]
    if unknown:
        raise ConfigError(f"{key_path(path, unknown[0])}: unknown key (known: {', '.join(fields)})")
    kwargs = {}
    for name, value in data.items():
        # legacy keys are checked by the settings they move into
        kwargs[name] = value if name not in fields else _coerce(value, hints[name], key_path(path, name))
    missing = [
        n for n, f in fields.items()
        if n not in kwargs and f.init and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
    ]
    if missing:
        raise ConfigError(f"{key_path(path, missing[0])}: required")
    return cls(**kwargs)


def _coerce(value, hint, path: str):
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if hint is typing.Any:
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = {}
        for a in args:
            if a is type(None):
                continue
            try:
                return _coerce(value, a, path)
            except ConfigError as e:
                errors[a] = str(e)
        # the alternative of the value's own shape says what is wrong inside it
        # (mixture.initial = {"strings": nan, ...} -> mixture.initial.strings: expected a finite number)
        fitting = [msg for a, msg in errors.items() if isinstance(value, _shape(a))]
        if len(fitting) == 1:
            raise ConfigError(fitting[0])
        if len(errors) == 1:
            raise ConfigError(next(iter(errors.values())))
        raise ConfigError(f"{path}: expected {' or '.join(_SHAPE_NAMES.get(_shape(a), str(a)) for a in errors)}, "
                          f"got {show(value)}")
    if dataclasses.is_dataclass(hint):
        return _build(value, hint, path)
    if origin is list:
        if not isinstance(value, list):
            raise ConfigError(f"{path}: expected a list, got {type(value).__name__}")
        return [_coerce(v, args[0], f"{path}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{path}: expected a table/object, got {type(value).__name__}")
        for k in value:
            if not isinstance(k, str):
                raise ConfigError(f"{path}: keys must be strings, got {show(k)}")
        return {k: _coerce(v, args[1], key_path(path, k)) for k, v in value.items()}
    if hint is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{path}: expected true or false, got {show(value)}")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{path}: expected an integer, got {show(value)}")
        if not -INT64 <= value < INT64:
            raise ConfigError(f"{path}: {show(value)} is outside 64-bit integers")
        return value
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{path}: expected a number, got {show(value)}")
        try:
            finite = math.isfinite(value)
        except OverflowError:  # an int too large for a float
            finite = False
        if not finite:
            raise ConfigError(f"{path}: expected a finite number, got {show(value)}")
        return float(value)
    if hint is str:
        if not isinstance(value, str):
            raise ConfigError(f"{path}: expected a string, got {show(value)}")
        return value
    raise ConfigError(f"{path}: unsupported type {hint}")


_SHAPE_NAMES = {dict: "a table/object", list: "a list", str: "a string", bool: "true or false",
                int: "an integer", float: "a number"}


def _shape(hint) -> type:
    """The Python type a value of `hint` is written as (a dataclass: a dict)."""
    return dict if dataclasses.is_dataclass(hint) else typing.get_origin(hint) or hint


# -- files and presets -----------------------------------------------------------------


def load(path: str | Path, *, limits: Limits | None = None) -> RunConfig:
    """Load a run config from a .json or .toml file (at most
    limits.max_config_bytes); it may name a preset under key `preset` and
    override any of its fields."""
    limits = limits or Limits.from_env()
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"config file {str(p)!r} " + ("is a folder, not a config file" if p.is_dir()
                                                        else "does not exist"))
    if p.suffix not in (".toml", ".json"):
        raise ConfigError(f"config file {str(p)!r}: expected .json or .toml")
    if p.stat().st_size > limits.max_config_bytes:
        raise ConfigError(f"config file {str(p)!r}: {p.stat().st_size:,} bytes is above the limit of "
                          f"{limits.max_config_bytes:,} bytes (CLOSED_LOOP_MAX_CONFIG_BYTES)")
    return from_text(p.read_bytes(), p.suffix[1:], name=f"config file {str(p)!r}", limits=limits)


def from_text(text: str | bytes, fmt: str, *, name: str = "config", limits: Limits | None = None,
              untrusted: bool = False) -> RunConfig:
    """A run config from TOML or JSON text (a file's or an upload's), within
    the input limits; errors start with `name`. untrusted: as from_dict."""
    limits = limits or Limits.from_env()
    if fmt not in ("toml", "json"):
        raise ConfigError(f"{name}: expected .json or .toml, got {fmt!r}")
    try:
        data = parse_text(text, fmt, max_bytes=limits.max_config_bytes, max_depth=limits.max_depth)
    except InputError as e:
        raise ConfigError(str(e) if e.field else f"{name}: {e}") from None
    return from_data(data, limits=limits, untrusted=untrusted)


def from_data(data: dict, *, limits: Limits | None = None, untrusted: bool = False) -> RunConfig:
    """A config from plain data, starting from `preset` when it names one;
    untrusted: as from_dict (the paths of the merged data are confined)."""
    from backend.config.presets import preset_data

    limits = limits or Limits.from_env()
    if not isinstance(data, dict):
        raise ConfigError("config: expected a table/object at the top level")
    try:
        check_plain(data, max_depth=limits.max_depth)
    except InputError as e:
        raise ConfigError(str(e)) from None
    data = dict(data)
    if "preset" in data:
        data = merge(preset_data(data.pop("preset")), data)
    cfg = from_dict(data, limits=limits, untrusted=untrusted)
    # from_dict drops another strategy's legacy settings from options (stored
    # configs of the era when options held all five); written by a person, one is a slip
    known = [f.name for f in dataclasses.fields(cfg.controller.settings_class())]
    for key in (data.get("controller") or {}).get("options") or {}:
        if key not in known:
            raise ConfigError(f"{key_path('controller.options', key)}: not a setting of strategy "
                              f"{cfg.controller.strategy!r} (its settings: {', '.join(known) or 'none'})")
    return cfg


def merge(base: dict, over: dict) -> dict:
    """`over` laid on `base` table by table (lists and mixture.initial are
    replaced whole). A controller whose strategy changes drops the base's
    options, which belong to the other strategy."""
    out = dict(base)
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict) and k != "initial":
            old = out[k]
            if k == "controller" and v.get("strategy", old.get("strategy")) != old.get("strategy"):
                old = {n: x for n, x in old.items() if n != "options" and n not in ControllerConfig.LEGACY_KEYS}
            out[k] = merge(old, v)
        else:
            out[k] = v
    return out
