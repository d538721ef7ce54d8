"""etcdctl's `txn` input, parsed into `dengine.Compare`s and `dengine.Op`s (pure).

    mod("k") > "0"              compares, one per line, then a blank line
    value("k") = "v"
    <blank>
    put k v2                    success ops (put, get, del with their flags), blank line
    get k --prefix
    <blank>
    put k v3                    failure ops, blank line (or the end of the input)
    <blank>

Compare targets: `ver`/`version`, `c`/`create`, `m`/`mod`, `val`/`value`, `lease`;
operators `=` (`==`), `!=`, `<`, `>`; the key and the operand are double-quoted (Go
escapes). Op lines are split like a shell line (single or double quotes); their flags are
etcdctl's (`put --prev-kv --lease`, `get --prefix --from-key --limit --rev --sort-by
--order --keys-only --count-only`, `del --prefix --from-key --prev-kv`).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from dengine.errors import InvalidRequest
from dengine.kv.ops import Compare, CompareTarget, Op

_COMPARE_TARGETS: dict[str, Callable[[bytes], CompareTarget]] = {
    "ver": Compare.version, "version": Compare.version,
    "c": Compare.create_revision, "create": Compare.create_revision,
    "m": Compare.mod_revision, "mod": Compare.mod_revision,
    "val": Compare.value, "value": Compare.value,
    "lease": Compare.lease,
}
_OPERATORS = {"=": "==", "==": "==", "!=": "!=", "<": "<", ">": ">"}
_QUOTED = r'"(?:[^"\\]|\\.)*"'
_COMPARE_LINE = re.compile(
    rf'^\s*(\w+)\(\s*({_QUOTED})\s*\)\s*([<>=!]+)\s*({_QUOTED})\s*$')
# etcdctl's argify: double-quoted, single-quoted, or bare words.
_ARG = re.compile(r'''"(?:[^"\\]|\\.)*"|'[^']*'|[^'"\s]\S*[^'"\s]?''')
_ESCAPES = {"n": "\n", "t": "\t", "r": "\r", "\\": "\\", '"': '"', "'": "'", "a": "\a",
            "b": "\b", "f": "\f", "v": "\v", "0": "\0"}


class TxnSyntaxError(InvalidRequest):
    """A line of the txn input that is not etcdctl's grammar."""


@dataclass
class TxnInput:
    compare: list[Compare] = field(default_factory=list)
    success: list[Op] = field(default_factory=list)
    failure: list[Op] = field(default_factory=list)


def unquote(text: str) -> bytes:
    """A double-quoted string with Go's escapes -> its bytes (UTF-8)."""
    if len(text) < 2 or text[0] != '"' or text[-1] != '"':
        raise TxnSyntaxError(f"not a quoted string: {text}")
    out = bytearray()
    body = text[1:-1]
    i = 0
    while i < len(body):
        ch = body[i]
        if ch != "\\":
            out += ch.encode("utf-8", "surrogateescape")
            i += 1
            continue
        if i + 1 >= len(body):
            raise TxnSyntaxError(f"bad escape at the end of {text}")
        esc = body[i + 1]
        if esc == "x" and re.fullmatch(r"[0-9a-fA-F]{2}", body[i + 2:i + 4]):
            out.append(int(body[i + 2:i + 4], 16))
            i += 4
        elif esc in _ESCAPES:
            out += _ESCAPES[esc].encode()
            i += 2
        else:
            raise TxnSyntaxError(f"unknown escape \\{esc} in {text}")
    return bytes(out)


def parse_compare(line: str) -> Compare:
    """`mod("k") > "5"` -> Compare.mod_revision(b"k") > 5."""
    m = _COMPARE_LINE.match(line)
    if m is None:
        raise TxnSyntaxError(f'malformed comparison: {line} (expected TARGET("KEY") OP '
                             '"VALUE", e.g. mod("k") > "0")')
    name, key_text, op_text, operand_text = m.groups()
    target = _COMPARE_TARGETS.get(name)
    if target is None:
        raise TxnSyntaxError(f"malformed comparison: {line} (unknown target {name}; expected "
                             "version, create, mod, value or lease)")
    op = _OPERATORS.get(op_text)
    if op is None:
        raise TxnSyntaxError(f"malformed comparison: {line} (unknown operator {op_text}; "
                             "expected =, !=, < or >)")
    side = target(unquote(key_text))
    operand: int | bytes = unquote(operand_text)
    if side.target != "value":
        try:
            operand = int(operand)
        except ValueError:
            raise TxnSyntaxError(f"invalid txn compare request: {line} ({name} takes an "
                                 "integer)") from None
    if op == "==":
        return side == operand
    if op == "!=":
        return side != operand
    return side < operand if op == "<" else side > operand


def argify(line: str) -> list[bytes]:
    """A line split into words like etcdctl does (quotes group, and are removed)."""
    out = []
    for word in _ARG.findall(line):
        if word.startswith("'") and word.endswith("'") and len(word) >= 2:
            out.append(word[1:-1].encode("utf-8", "surrogateescape"))
        elif word.startswith('"'):
            out.append(unquote(word))
        else:
            out.append(word.encode("utf-8", "surrogateescape"))
    return out


_FLAGS_WITH_VALUE = {"--limit", "--rev", "--sort-by", "--order", "--lease"}
_OP_FLAGS = {
    "put": {"--prev-kv", "--lease", "--ignore-value", "--ignore-lease"},
    "get": {"--prefix", "--from-key", "--limit", "--rev", "--sort-by", "--order",
            "--keys-only", "--count-only"},
    "del": {"--prefix", "--from-key", "--prev-kv"},
}


def _split_flags(line: str, words: list[bytes], allowed: set[str]
                 ) -> tuple[list[bytes], dict[str, str]]:
    args: list[bytes] = []
    flags: dict[str, str] = {}
    it = iter(words)
    for word in it:
        if not word.startswith(b"--"):
            args.append(word)
            continue
        text = word.decode("utf-8", "surrogateescape")
        name, eq, value = text.partition("=")
        if name not in allowed:
            raise TxnSyntaxError(f"invalid txn request: {line} (unknown flag {name})")
        if name in _FLAGS_WITH_VALUE and not eq:
            nxt = next(it, None)
            if nxt is None:
                raise TxnSyntaxError(f"invalid txn request: {line} ({name} needs a value)")
            value = nxt.decode("utf-8", "surrogateescape")
        elif name not in _FLAGS_WITH_VALUE:
            if eq and value.lower() not in ("true", "false"):
                raise TxnSyntaxError(f"invalid txn request: {line} ({name} is a flag)")
            value = "false" if value.lower() == "false" else "true"
        flags[name] = value
    return args, flags


def _int_flag(line: str, flags: dict[str, str], name: str) -> int:
    text = flags.get(name)
    if text is None:
        return 0
    try:
        value = int(text, 16) if name == "--lease" else int(text)
    except ValueError:
        raise TxnSyntaxError(f"invalid txn request: {line} ({name} takes an integer, got "
                             f"{text!r})") from None
    if value < 0:
        raise TxnSyntaxError(f"invalid txn request: {line} ({name} must be >= 0)")
    return value


def parse_op(line: str) -> Op:
    """`put k v`, `get k [end] [--prefix ...]`, `del k [end] [--prefix] [--prev-kv]`."""
    words = argify(line)
    if not words:
        raise TxnSyntaxError(f"invalid txn request: {line}")
    verb = words[0].decode("utf-8", "surrogateescape")
    if verb not in _OP_FLAGS:
        raise TxnSyntaxError(f"invalid txn request: {line} (expected put, get or del)")
    args, flags = _split_flags(line, words[1:], _OP_FLAGS[verb])

    def on(name: str) -> bool:
        return flags.get(name) == "true"

    try:
        if verb == "put":
            if len(args) != 2:
                raise TxnSyntaxError(f"invalid txn request: {line} (put takes KEY VALUE)")
            return Op.put(args[0], args[1], prev_kv=on("--prev-kv"),
                          lease=_int_flag(line, flags, "--lease"),
                          ignore_value=on("--ignore-value"),
                          ignore_lease=on("--ignore-lease"))
        if not 1 <= len(args) <= 2:
            raise TxnSyntaxError(f"invalid txn request: {line} ({verb} takes KEY "
                                 "[RANGE_END])")
        range_end = args[1] if len(args) == 2 else None
        if verb == "del":
            return Op.delete(args[0], range_end, prefix=on("--prefix"),
                             from_key=on("--from-key"), prev_kv=on("--prev-kv"))
        order = flags.get("--order")
        return Op.get(args[0], range_end, prefix=on("--prefix"), from_key=on("--from-key"),
                      limit=_int_flag(line, flags, "--limit"),
                      revision=_int_flag(line, flags, "--rev"),
                      sort_target=sort_target_name(flags.get("--sort-by")),
                      sort_order=order_name(order, flags.get("--sort-by")),
                      keys_only=on("--keys-only"), count_only=on("--count-only"))
    except TxnSyntaxError:
        raise
    except InvalidRequest as e:
        raise TxnSyntaxError(f"invalid txn request: {line} ({e.message})") from None


def sort_target_name(sort_by: str | None) -> str:
    """etcdctl's --sort-by (CREATE, KEY, MODIFY, VALUE, VERSION; any case)."""
    if not sort_by:
        return "key"
    name = sort_by.lower()
    names = {"create": "create", "key": "key", "modify": "mod", "mod": "mod",
             "value": "value", "version": "version"}
    if name not in names:
        raise InvalidRequest(f"bad sort target {sort_by!r} (expected CREATE, KEY, MODIFY, "
                             "VALUE or VERSION)")
    return names[name]


def order_name(order: str | None, sort_by: str | None) -> str | None:
    """etcdctl's --order (ASCEND, DESCEND); with only --sort-by, ascending."""
    if not order:
        return "ascend" if sort_by else None
    name = order.lower()
    if name not in ("ascend", "descend"):
        raise InvalidRequest(f"bad sort order {order!r} (expected ASCEND or DESCEND)")
    return name


def _sections(lines: Iterator[str]) -> Iterator[list[str]]:
    """The three blank-line terminated sections (the end of input ends one too)."""
    for _ in range(3):
        section: list[str] = []
        for raw in lines:
            line = raw.rstrip("\r\n")
            if not line.strip():
                break
            section.append(line)
        yield section


def parse_txn(lines: Iterator[str], prompt: Callable[[str], None] | None = None
              ) -> TxnInput:
    """Read etcdctl's txn input from `lines` (an iterator, so that interactive input is
    read as it comes). `prompt` is called before each section (etcdctl's `txn -i`)."""
    out = TxnInput()
    titles = ("compares:", "success requests (get, put, del):",
              "failure requests (get, put, del):")
    sections = _sections(lines)
    for i, title in enumerate(titles):
        if prompt is not None:
            prompt(title)
        section = next(sections)
        if i == 0:
            out.compare = [parse_compare(line) for line in section]
        elif i == 1:
            out.success = [parse_op(line) for line in section]
        else:
            out.failure = [parse_op(line) for line in section]
    return out
