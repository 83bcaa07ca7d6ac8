"""tftpd-hpa's file name remapping rules (C{in.tftpd --map-file}): parse and apply, pure.

An operator moving from tftpd-hpa keeps the rule file.  The format is
tftpd-hpa's (its manual page, section "FILENAME REMAPPING", and its
C{tftpd/remap.c}): one rule a line, C{#} starts a comment unless escaped,
and each rule is three fields separated by white space (a backslash
escapes white space and C{#} inside a field)::

    FLAGS  REGEX  [REPLACEMENT]

Flags: C{r} replace the match by REPLACEMENT; C{g} repeat C{r} until the
rule no longer matches; C{i} match case-insensitively; C{e} end processing
when the rule matches; C{s} start again from the first rule when it
matches; C{a} refuse the request when it matches (REPLACEMENT, if any, is
the message); C{G} / C{P} only for reads (RRQ) / writes (WRQ); C{4} / C{6}
only for IPv4 / IPv6 clients; C{~} act when the regex does I{not} match.
REGEX is a POSIX extended regular expression (egrep's), matched
leftmost-longest as C{regexec} does.  In REPLACEMENT: C{\\0} the whole
match, C{\\1}-C{\\9} groups, C{\\i} the client's address (C{192.0.2.169},
C{2001:db8::1}), C{\\x} the same in hexadecimal (C{C00002A9}, 32 digits
for IPv6), C{\\U} / C{\\L} / C{\\E} upper-case / lower-case / as-is for
what follows, C{\\\\} a backslash; a backslash before any other character
gives that character.

Rules run from the top down, all of them unless C{e}, C{s} or C{a} says
otherwise.  tftpd-hpa's own guard against rules that never end is a
"deadman" count of rule applications (4096 in tftp-hpa 5.3, 1024 before);
here three bounds hold together, so that one request never holds the
reactor for long:

 - the name given to the rules, and every name a rule makes, is at most
   L{MAX_NAME} characters (a rule that doubles the name stops there);
 - at most L{MAX_STEPS} rule applications (each C{g} repetition counts);
 - the regular expressions of one request together run at most
   L{TIME_BUDGET} seconds: the C{regex} package stops a match at its
   C{timeout=} (Python's C{re} has no timeout, so a pattern such as
   C{(a|aa)+$} could hold the server for hours).

Each gives L{RemapGaveUp}; a rule with C{a} gives L{RemapRefused}.  Errors
in the file are found when it is read, each with its line number
(L{RemapSyntaxError}), never at the first request.
"""

from __future__ import annotations

import ipaddress
import time
from collections.abc import Callable, Sequence
from typing import Literal

import attrs
import regex

from filexfer._guard import ipv4_form

MAX_NAME = 4096
"""Characters of a name given to, or made by, the rules."""
MAX_STEPS = 1024
"""Rule applications for one name (tftp-hpa 5.2's deadman count)."""
TIME_BUDGET = 0.1
"""Seconds all the regular expression matches for one name may take together."""

FLAGS = frozenset("rgieasGP46~")
_BAD_PAIRS = ("r~", "ra", "as", "ae", "es")
"""Flags that cannot go together (tftpd-hpa refuses the same pairs)."""

Kind = Literal["read", "write"]


class RemapSyntaxError(ValueError):
    """A rule file that cannot be used; C{str()} names the line."""

    def __init__(self, line: int, message: str) -> None:
        super().__init__(f"line {line}: {message}")
        self.line = line


class RemapRefused(Exception):
    """A rule with the C{a} flag matched: the request is refused (TFTP ERROR 2)."""

    def __init__(self, line: int, message: str) -> None:
        super().__init__(message)
        self.line = line
        self.message = message


class RemapGaveUp(Exception):
    """The rules did not finish within the bounds (steps, length or time)."""


# -- a replacement: literal text, groups, the client's address, case changes -----------

_Piece = tuple[Literal["text", "group", "macro", "case"], str]


def _compile_replacement(text: str) -> tuple[_Piece, ...]:
    pieces: list[_Piece] = []
    literal: list[str] = []

    def flush() -> None:
        if literal:
            pieces.append(("text", "".join(literal)))
            literal.clear()

    index = 0
    while index < len(text):
        char = text[index]
        if char != "\\":
            literal.append(char)
            index += 1
            continue
        following = text[index + 1 : index + 2]
        index += 2
        if following.isdigit() and following.isascii():
            flush()
            pieces.append(("group", following))
        elif following in ("i", "x"):
            flush()
            pieces.append(("macro", following))
        elif following in ("U", "L", "E"):
            flush()
            pieces.append(("case", following))
        elif following == "":
            literal.append("\\")  # a trailing backslash is itself
        else:
            literal.append(following)  # \\ \# \<space> and any other: the character
    flush()
    return tuple(pieces)


def address_text(client: str) -> str:
    """C{\\i}: the client's address as tftpd-hpa writes it (IPv4-mapped shown as IPv4)."""
    return str(ipaddress.ip_address(ipv4_form(client.split("%", 1)[0])))


def address_hex(client: str) -> str:
    """C{\\x}: the client's address in upper-case hexadecimal, 8 digits (IPv4) or 32 (IPv6)."""
    address = ipaddress.ip_address(address_text(client))
    return address.packed.hex().upper()


def _cased(text: str, case: str) -> str:
    return text.upper() if case == "U" else text.lower() if case == "L" else text


def _expand(pieces: Sequence[_Piece], match: regex.Match[str] | None, client: str) -> str:
    out: list[str] = []
    case = "E"
    for kind, value in pieces:
        if kind == "case":
            case = value
            continue
        if kind == "text":
            part = value
        elif kind == "group":
            group = None
            if match is not None and int(value) <= (match.re.groups or 0):
                group = match.group(int(value))
            part = group or ""
        else:
            part = address_text(client) if value == "i" else address_hex(client)
        out.append(_cased(part, case))
    return "".join(out)


# -- a rule file ---------------------------------------------------------------------------


def _fields(line: str) -> list[str]:
    """The white-space separated fields before an unescaped C{#}; escapes are kept."""
    fields: list[str] = []
    current: list[str] = []
    escaped = False
    for char in line:
        if not escaped and (char.isspace() or char == "#"):
            if current:
                fields.append("".join(current))
                current = []
            if char == "#":
                return fields
            continue
        escaped = not escaped and char == "\\"
        current.append(char)
    if current:
        fields.append("".join(current))
    return fields


@attrs.frozen
class Rule:
    """One line of a rule file: its flags, its compiled regex and its replacement."""

    line: int
    flags: frozenset[str]
    pattern: regex.Pattern[str]
    replacement: tuple[_Piece, ...]

    def applies(self, kind: Kind, ipv6: bool) -> bool:
        """Whether the rule is for this kind of request and this client's family."""
        flags = self.flags
        if ("G" in flags and kind != "read") or ("P" in flags and kind != "write"):
            return False
        return not (("4" in flags and ipv6) or ("6" in flags and not ipv6))


def parse_rule(text: str, line: int) -> Rule | None:
    """One line of a rule file as a L{Rule}, or None for a blank or comment line.

    @raise RemapSyntaxError: an unknown flag, flags that cannot go together,
        no regex, or a regex that does not compile.
    """
    fields = _fields(text.replace("\0", "").replace("\r", ""))
    if not fields:
        return None
    flags = fields[0]
    unknown = sorted(set(flags) - FLAGS)
    if unknown:
        raise RemapSyntaxError(line, f"unknown flag {unknown[0]!r} in {flags!r}")
    for pair in _BAD_PAIRS:
        if pair[0] in flags and pair[1] in flags:
            raise RemapSyntaxError(line, f"flags {pair[0]} and {pair[1]} cannot be combined")
    if len(fields) < 2:
        raise RemapSyntaxError(line, f"rule {flags!r} has no regular expression")
    options = regex.POSIX | regex.VERSION0 | (regex.IGNORECASE if "i" in flags else 0)
    try:
        pattern = regex.compile(fields[1], options)
    except (regex.error, ValueError, OverflowError) as exc:
        raise RemapSyntaxError(line, f"bad regular expression {fields[1]!r}: {exc}") from None
    replacement = _compile_replacement(fields[2] if len(fields) > 2 else "")
    for kind, value in replacement:
        if kind == "group" and int(value) > pattern.groups:
            raise RemapSyntaxError(
                line, f"\\{value} names a group the regular expression does not have"
            )
    kept = frozenset(flags) if "r" in flags else frozenset(flags) - {"g"}
    return Rule(line, kept, pattern, replacement)


@attrs.frozen
class RemapResult:
    """What the rules made of a name, and which lines changed it (for C{--tftp-remap-test})."""

    name: str
    lines: tuple[int, ...] = ()


@attrs.frozen
class RemapRules:
    """A parsed rule file; L{apply} maps one requested name.

    @ivar max_steps: rule applications allowed for one name.
    @ivar max_name: characters a name may have, before and after each rule.
    @ivar time_budget: seconds all the matches for one name may take.
    @ivar clock: monotonic seconds (injectable for tests).
    """

    rules: tuple[Rule, ...]
    max_steps: int = MAX_STEPS
    max_name: int = MAX_NAME
    time_budget: float = TIME_BUDGET
    clock: Callable[[], float] = time.monotonic

    def apply(self, name: str, *, kind: Kind, client: str) -> RemapResult:
        """Run the rules over C{name}, requested by C{client} (an IP address text).

        @raise RemapRefused: a rule with C{a} matched.
        @raise RemapGaveUp: too many steps, a name too long, or the matches
            took longer than L{time_budget} together.
        """
        if len(name) > self.max_name:
            raise RemapGaveUp(f"the name is longer than {self.max_name} characters")
        ipv6 = ":" in address_text(client)
        deadline = self.clock() + self.time_budget
        steps = self.max_steps
        changed: list[int] = []
        current = name
        index = 0
        rules = self.rules
        while index < len(rules):
            rule = rules[index]
            index += 1
            if not rule.applies(kind, ipv6):
                continue
            steps -= 1
            if steps < 0:
                raise RemapGaveUp(f"the rules did not finish in {self.max_steps} steps")
            match = self._search(rule, current, deadline)
            if (match is not None) == ("~" in rule.flags):
                continue
            if "r" in rule.flags:
                while match is not None:
                    before, after = current[: match.start()], current[match.end() :]
                    current = before + _expand(rule.replacement, match, client) + after
                    if len(current) > self.max_name:
                        raise RemapGaveUp(
                            f"line {rule.line} made a name longer than {self.max_name} characters"
                        )
                    if not changed or changed[-1] != rule.line:
                        changed.append(rule.line)
                    if "g" not in rule.flags:
                        break
                    steps -= 1
                    if steps < 0:
                        raise RemapGaveUp(f"the rules did not finish in {self.max_steps} steps")
                    match = self._search(rule, current, deadline)
            if "a" in rule.flags:
                message = _expand(rule.replacement, match, client)
                raise RemapRefused(rule.line, message or "access denied by a remap rule")
            if "e" in rule.flags:
                break
            if "s" in rule.flags:
                index = 0
        return RemapResult(current, tuple(changed))

    def _search(self, rule: Rule, text: str, deadline: float) -> regex.Match[str] | None:
        remaining = deadline - self.clock()
        if remaining <= 0:
            raise RemapGaveUp(f"the regular expressions took longer than {self.time_budget}s")
        try:
            return rule.pattern.search(text, timeout=remaining)
        except TimeoutError:
            raise RemapGaveUp(
                f"the regular expression on line {rule.line} took longer than {self.time_budget}s"
            ) from None


def parse_rules(text: str) -> RemapRules:
    """A whole rule file's text as L{RemapRules}.

    @raise RemapSyntaxError: for the first line that cannot be used (its
        number is in the message).
    """
    rules = []
    for number, line in enumerate(text.split("\n"), start=1):
        rule = parse_rule(line, number)
        if rule is not None:
            rules.append(rule)
    return RemapRules(tuple(rules))


def load_rules(path: str) -> RemapRules:
    """Read and parse the rule file at C{path} (UTF-8; undecodable bytes are an error).

    @raise RemapSyntaxError: a line that cannot be used.
    @raise OSError: the file cannot be read.
    """
    with open(path, "rb") as handle:
        data = handle.read()
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise RemapSyntaxError(line, "not UTF-8 text") from None
    return parse_rules(text)
