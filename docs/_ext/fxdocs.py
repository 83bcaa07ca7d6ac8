"""The filexfer site's Sphinx extension: help texts, option tables, docstrings, pictures.

* ``{filexfer-help} COMMAND``: the text ``filexfer [COMMAND] --help`` prints,
  made by the parsers of :mod:`filexfer.cli` themselves (so the reference
  and the command cannot say different things);
* ``{twistd-options}``: a table of every option of
  :class:`filexfer.service.Options` (``twistd filexfer`` and
  ``filexfer serve``), with its default, and the examples it prints;
* docstrings are written in epytext (``C{x}``, ``L{x}``, ``@param``): they
  are turned into reStructuredText as autodoc reads them; a public name
  without a docstring is a warning (and ``-W`` makes it an error);
* a reference autodoc could not resolve: a filexfer name is found among the
  documented objects; a name that imports from outside filexfer (Twisted,
  zope.interface, the standard library: no inventory offline) becomes
  plain text; anything else stays a warning;
* at the start of the build every picture is drawn into ``_generated/``
  (:mod:`fxpictures`, :mod:`fxsequences`, :mod:`fxcharts`).
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import inspect
import os
import re
import sys
from collections.abc import Iterator
from typing import Any

from docutils import nodes
from docutils.parsers.rst import Directive, directives
from sphinx.application import Sphinx
from sphinx.util import logging

logger = logging.getLogger(__name__)

HELP_COLUMNS = "80"

# -- help texts -------------------------------------------------------------------


@contextlib.contextmanager
def _columns(width: str) -> Iterator[None]:
    """argparse wraps to $COLUMNS: fix it while the help is made, as a terminal of 80."""
    before = os.environ.get("COLUMNS")
    os.environ["COLUMNS"] = width
    try:
        yield
    finally:
        if before is None:
            del os.environ["COLUMNS"]
        else:
            os.environ["COLUMNS"] = before


def help_text(command: str) -> str:
    """What C{filexfer [COMMAND] --help} prints ('' for the top level)."""
    from filexfer import cli

    with _columns(HELP_COLUMNS):
        if command == "serve":
            return str(cli.serve_options())
        parser = cli._build_parser()
        if not command:
            return parser.format_help()
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                return action.choices[command].format_help()
    raise ValueError(f"no such command: {command!r}")


class FilexferHelp(Directive):
    """The help of one command, as a literal block."""

    optional_arguments = 1

    def run(self) -> list[nodes.Node]:
        command = self.arguments[0] if self.arguments else ""
        text = help_text(command).rstrip("\n")
        block = nodes.literal_block(text, text)
        block["language"] = "text"
        return [block]


class TwistdOptions(Directive):
    """Every option of the service, one row each, from the Options class."""

    def run(self) -> list[nodes.Node]:
        from filexfer.service import Options

        rows = []
        for name, short, default, text in option_rows(Options):
            rows.append((name, short, default, text))
        table = nodes.table(classes=["longtable"])
        group = nodes.tgroup(cols=4)
        table += group
        for width in (22, 6, 14, 58):
            group += nodes.colspec(colwidth=width)
        head = nodes.thead()
        group += head
        head += _row(["option", "short", "default", "meaning"], literal=False)
        body = nodes.tbody()
        group += body
        for row in rows:
            body += _row(list(row), literal=True)
        examples = Options.description.rstrip("\n")
        block = nodes.literal_block(examples, examples)
        block["language"] = "text"
        return [table, block]


def option_rows(options_class: Any) -> list[tuple[str, str, str, str]]:
    """(--name, -x, default, help) for each parameter, flag and opt_ method."""
    rows = []
    for name, short, default, text, *_ in options_class.optParameters:
        shown = "" if default is None else str(default)
        rows.append((f"--{name}", f"-{short}" if short else "", shown, text))
    for name, short, text in options_class.optFlags:
        rows.append((f"--{name}", f"-{short}" if short else "", "off", text))
    for attribute in sorted(dir(options_class)):
        if attribute.startswith("opt_") and attribute not in ("opt_help", "opt_version"):
            method = getattr(options_class, attribute)
            doc = " ".join((inspect.getdoc(method) or "").split())
            rows.append((f"--{attribute[4:].replace('_', '-')}", "", "", doc))
    return sorted(rows)


def _row(cells: list[str], literal: bool) -> nodes.row:
    row = nodes.row()
    for index, cell in enumerate(cells):
        entry = nodes.entry()
        paragraph = nodes.paragraph()
        if literal and index < 3 and cell:
            paragraph += nodes.literal(cell, cell)
        else:
            paragraph += nodes.Text(cell)
        entry += paragraph
        row += entry
    return row


class ZopeInterfaces(Directive):
    """Every zope.interface named in a module's __all__, with its methods and attributes.

    autodoc has no documenter for interfaces (they are not classes).
    """

    required_arguments = 1

    def run(self) -> list[nodes.Node]:
        from docutils.statemachine import StringList
        from zope.interface.interface import InterfaceClass, Method

        module_name = self.arguments[0]
        module = importlib.import_module(module_name)
        lines: list[str] = []
        for name in module.__all__:
            interface = getattr(module, name)
            if not isinstance(interface, InterfaceClass):
                continue
            context = f"{interface.__module__}.{interface.__name__}"
            lines += [f".. py:class:: {name}", f"   :module: {module_name}", ""]
            lines += [
                f"   Bases: ``{base.__module__}.{base.__name__}``"
                for base in interface.__bases__
                if base.__name__ != "Interface"
            ]
            lines += _indented(interface.__doc__, context, "   ")
            for member_name in interface.names():
                member = interface[member_name]
                if isinstance(member, Method):
                    lines.append(f"   .. py:method:: {member_name}{member.getSignatureString()}")
                else:
                    lines.append(f"   .. py:attribute:: {member_name}")
                lines.append("")
                lines += _indented(member.__doc__, f"{context}.{member_name}", "      ")
            lines.append("")
        container = nodes.section()
        container.document = self.state.document
        self.state.nested_parse(StringList(lines, source=module_name), 0, container)
        return list(container.children)


def _indented(doc: str | None, context: str, indent: str) -> list[str]:
    text = inspect.cleandoc(doc or "")
    if not text:
        logger.warning("%s has no docstring", context)
    converted = epytext_to_rst(text.splitlines(), context)
    return ["", *(indent + line if line else "" for line in converted), ""]


# -- docstrings -------------------------------------------------------------------

_FIELD = re.compile(
    r"^(\s*)@(param|type|return|returns|rtype|raise|raises|ivar|cvar|var|note)\b\s*([^:]*):"
)
_MARKUP = re.compile(r"([CLIBU])\{([^{}]*)\}")
_FIELD_NAMES = {"return": "returns", "raise": "raises", "note": "note"}


def epytext_to_rst(lines: list[str], module: str) -> list[str]:
    """Epytext fields and inline markup -> reStructuredText, in place of the lines.

    L{name} of an instance variable (C{@ivar name:}) or of a private name
    is shown as code: neither has a page to link to.
    """
    private = {m.group(1) for line in lines if (m := re.match(r"\s*@ivar\s+(\w+):", line))}
    converted = []
    for line in lines:
        field = _FIELD.match(line)
        if field is not None:
            indent, kind, argument = field.groups()
            kind = _FIELD_NAMES.get(kind, kind)
            argument = argument.strip()
            if kind == "raises" and argument:
                argument = _reference_target(argument, module) or argument
            line = f"{indent}:{kind}{' ' + argument if argument else ''}:" + line[field.end() :]
        converted.append(_MARKUP.sub(lambda match: _inline_in(match, module, private), line))
    return converted


def _inline_in(match: re.Match[str], module: str, private: set[str]) -> str:
    """The markup, and an escaped space when a word goes on right after it (L{X}s)."""
    following = match.string[match.end() : match.end() + 1]
    kind, target = match.groups()
    last = target.strip().rstrip("()").rpartition(".")[2]
    if kind == "L" and (target in private or last.startswith("_")):
        text = f"``{target}``"
    else:
        text = _inline(match, module)
    if text.startswith("``") and match.group(1) == "C" or text.startswith(":") or text[:1] in "*":
        return text + ("\\ " if following.isalnum() else "")
    return text


def _inline(match: re.Match[str], module: str) -> str:
    kind, text = match.groups()
    if kind == "C":
        return f"``{text}``" if text else "``''``"
    if kind == "I":
        return f"*{text}*"
    if kind == "B":
        return f"**{text}**"
    if kind == "U":
        return text
    target = _reference_target(text, module)
    if target is None:
        return f"``{text}``"
    return f":py:obj:`{text} <{target}>`"


def _reference_target(text: str, module: str) -> str | None:
    """The full name of a filexfer object that L{text} means, or None (shown as text).

    A name that resolves to nothing at all is a broken reference: warned.
    """
    found = resolve(text, module)
    if found is None:
        logger.warning("docstring in %s: L{%s} names nothing importable", module, text)
        return None
    if not found.startswith("filexfer"):
        return None
    return found


def resolve(text: str, context: str) -> str | None:
    """Where C{text}, seen from C{context} (a dotted name: a module, a class, a method), leads.

    Searched as epydoc does: the enclosing class and module, then a full
    dotted name, then the builtins, then any loaded filexfer module (a
    private type alias). Returns a dotted full name, or None.
    """
    text = text.strip().rstrip("()")
    head, _, rest = text.partition(".")
    scope_name = context
    while scope_name:
        scope = _lookup(scope_name)
        if scope is not None and _attribute(scope, head) is not None:
            value = _attribute(scope, head)
            base = _full_name(value) if not inspect.ismodule(scope) or _full_name(value) else None
            base = base or f"{scope_name}.{head}"
            return f"{base}.{rest}" if rest else base
        scope_name = scope_name.rpartition(".")[0]
    parts = text.split(".")
    for cut in range(len(parts), 0, -1):
        imported = _import(".".join(parts[:cut]))
        if imported is None:
            continue
        value: Any = imported
        for part in parts[cut:]:
            value = _attribute(value, part)
            if value is None:
                return None
        return text
    if head in vars(__import__("builtins")):
        return f"builtins.{text}"
    for name, module in sorted(sys.modules.items()):
        if name.startswith("filexfer") and module is not None and head in vars(module):
            return f"{name}.{text}"
    return None


def _lookup(dotted: str) -> Any:
    """The object at a dotted name (a module, or an attribute chain within one), or None."""
    parts = dotted.split(".")
    for cut in range(len(parts), 0, -1):
        value = _import(".".join(parts[:cut]))
        if value is None:
            continue
        for part in parts[cut:]:
            value = _attribute(value, part)
            if value is None:
                return None
        return value
    return None


def _attribute(value: Any, name: str) -> Any:
    """C{value.name}, or an interface's C{value[name]} (its methods are no attributes)."""
    from zope.interface.interface import InterfaceClass

    if isinstance(value, InterfaceClass):
        return value.get(name)
    return getattr(value, name, None)


def _import(name: str) -> Any:
    try:
        return importlib.import_module(name)
    except Exception:
        return None


def _full_name(value: Any) -> str | None:
    if inspect.ismodule(value):
        return value.__name__
    module = getattr(value, "__module__", None)
    qualname = getattr(value, "__qualname__", None) or getattr(value, "__name__", None)
    if isinstance(module, str) and isinstance(qualname, str) and "<" not in qualname:
        return f"{module}.{qualname}"
    return None


def process_docstring(
    app: Sphinx, what: str, name: str, obj: Any, options: Any, lines: list[str]
) -> None:
    if not any(line.strip() for line in lines) and _is_public(name, obj):
        logger.warning("%s %s has no docstring", what, name)
    lines[:] = epytext_to_rst(lines, name)


def _is_public(name: str, obj: Any) -> bool:
    if any(part.startswith("_") for part in name.split(".")):
        return False
    # Attributes and inherited data carry no docstring of their own.
    return inspect.isclass(obj) or inspect.isfunction(obj) or inspect.ismodule(obj)


def missing_reference(app: Sphinx, env: Any, node: Any, contnode: nodes.Node) -> Any:
    """A filexfer name resolves among documented objects; an outside name becomes text."""
    if node.get("refdomain") != "py":
        return None
    target = node.get("reftarget", "")
    module = node.get("py:module") or "filexfer"
    full = resolve(target, module)
    if full is None:
        return None  # a real broken reference: nitpicky reports it
    if not full.startswith("filexfer"):
        return contnode
    domain = env.get_domain("py")
    for candidate in _public_names(full):
        if candidate in domain.objects:
            return _link(app, env, node, candidate, contnode)
    return contnode if not _documented_anywhere(full) else None


def _public_names(full: str) -> list[str]:
    """C{full} and the public names it is re-exported as (filexfer.X.m for …sender.X.m)."""
    import filexfer
    import filexfer.testing

    parts = full.split(".")
    names = [full]
    for index, part in enumerate(parts):
        rest = ".".join(parts[index:])
        if part in filexfer.__all__:
            names.append(f"filexfer.{rest}")
        if part in filexfer.testing.__all__:
            names.append(f"filexfer.testing.{rest}")
    return names


def _documented_anywhere(full: str) -> bool:
    """Whether C{full} belongs to the documented API (then a missing link is an error)."""
    import filexfer
    import filexfer.testing

    parts = full.split(".")
    return any(p in filexfer.__all__ or p in filexfer.testing.__all__ for p in parts[1:])


def _link(app: Sphinx, env: Any, node: Any, target: str, contnode: nodes.Node) -> Any:
    from sphinx.util.nodes import make_refnode

    docname = env.get_domain("py").objects[target].docname
    return make_refnode(app.builder, node["refdoc"], docname, target, contnode, target)


# -- pictures ---------------------------------------------------------------------


def draw_pictures(app: Sphinx) -> None:
    """Draw every picture into _generated/ before the pages are read."""
    import fxcharts
    import fxpictures
    import fxsequences

    folder = os.path.join(app.srcdir, "_generated")
    os.makedirs(folder, exist_ok=True)
    fxpictures.draw_all(folder)
    fxsequences.draw_all(folder)
    fxcharts.draw_all(os.path.join(app.srcdir, "_data"), folder)


_INTERFACE = re.compile(r"<InterfaceClass ([\w.]+)>")


def process_signature(
    app: Sphinx,
    what: str,
    name: str,
    obj: Any,
    options: Any,
    signature: str | None,
    annotation: str | None,
) -> tuple[str | None, str | None]:
    """zope interfaces print as <InterfaceClass a.b.I> in annotations: name them a.b.I."""
    clean = [
        None if text is None else _INTERFACE.sub(r"\1", text) for text in (signature, annotation)
    ]
    return clean[0], clean[1]


def list_present_pages(app: Sphinx, docname: str, source: list[str]) -> None:
    """The index lists deploy* only when such a page exists (another change writes it)."""
    if docname == app.config.root_doc and not any(
        d.startswith("deploy") for d in app.env.found_docs
    ):
        source[0] = re.sub(r"(?m)^deploy\*\n", "", source[0])


def setup(app: Sphinx) -> dict[str, Any]:
    directives.register_directive("filexfer-help", FilexferHelp)
    directives.register_directive("twistd-options", TwistdOptions)
    directives.register_directive("zope-interfaces", ZopeInterfaces)
    app.connect("builder-inited", draw_pictures)
    app.connect("autodoc-process-docstring", process_docstring)
    app.connect("missing-reference", missing_reference)
    app.connect("autodoc-process-signature", process_signature)
    app.connect("source-read", list_present_pages)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
