"""Pictures drawn from the code: the TCP state machines and the module map (graphviz).

* ``receiver-machine.svg``, ``sender-machine.svg``: every transition of
  :class:`filexfer.ReceiverProtocol`'s and :class:`filexfer.SenderProtocol`'s
  automat machines, as automat itself draws them (``asDigraph``);
* ``tcp-states.svg``: both machines' states placed inside the TCP states
  (RFC 793/9293) they live in, the messages between them, and the close
  (who sends the first FIN, who waits in TIME_WAIT) as the code does it;
* ``module-map.svg``: the package's modules and the imports between them,
  read from the source with :mod:`ast`.
"""

# ruff: noqa: E501 - DOT statements read best one to a line

from __future__ import annotations

import ast
import os
import subprocess
from collections import defaultdict
from typing import Any

PACKAGE = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(__file__))), "filexfer")

# Inputs by which a connection ends early, and replies out of turn (output
# _unexpected): the close picture leaves them out (the full machines draw them).
ENDINGS = {"refused", "failed", "timed_out", "connection_lost", "shutting_down", "end_of_stream"}


def render(source: str, path: str) -> None:
    """Write C{source} (DOT) as an SVG at C{path} with graphviz's dot."""
    with open(path[: -len(".svg")] + ".dot", "w", encoding="utf-8") as handle:
        handle.write(source)
    subprocess.run(["dot", "-Tsvg", "-o", path], input=source.encode(), check=True, timeout=120)


def transitions(machine: Any) -> list[tuple[str, str, str, list[str]]]:
    """(state, input, next state, outputs) of a MethodicalMachine, in a stable order."""
    found = [
        (
            state.method.__name__,
            given.method.__name__,
            after.method.__name__,
            [output.method.__name__ for output in outputs],
        )
        for state, given, after, outputs in machine._automaton.allTransitions()
    ]
    return sorted(found)


def draw_machine(machine: Any, path: str) -> None:
    """Every transition, drawn by automat (inputs in the boxes, outputs below them)."""
    digraph = machine.asDigraph()
    digraph.graph_attr.update(rankdir="LR", fontname="Helvetica")
    digraph.node_attr.update(fontname="Helvetica")
    digraph.edge_attr.update(fontname="Helvetica")
    render(
        digraph.source.replace("Menlo-Bold", "Helvetica-Bold")
        .replace("Menlo", "Helvetica")
        .replace("menlo-italic", "Helvetica-Oblique"),
        path,
    )


def _quote(text: str) -> str:
    return '"' + text.replace('"', r"\"") + '"'


def _machine_edges(machine: Any, prefix: str, lines: list[str]) -> None:
    """The machine's forward transitions (no self-loops, no early endings), merged by pair."""
    labels: dict[tuple[str, str], list[str]] = defaultdict(list)
    for state, given, after, outputs in transitions(machine):
        if state == after or given in ENDINGS or "_unexpected" in outputs:
            continue
        labels[(state, after)].append(given)
    for (state, after), inputs in sorted(labels.items()):
        label = "\\n".join(sorted(set(inputs)))
        lines.append(f"  {prefix}_{state} -> {prefix}_{after} [label={_quote(label)}];")


def _cluster(name: str, label: str, states: list[str], prefix: str, color: str) -> list[str]:
    lines = [
        f"  subgraph cluster_{name} {{",
        f"    label={_quote(label)}; style=rounded;",
        f"    color={_quote(color)}; fontcolor={_quote(color)};",
    ]
    for state in states:
        lines.append(f"    {prefix}_{state} [label={_quote(state)}];")
    lines.append("  }")
    return lines


def tcp_states_source() -> str:
    """The DOT of the two machines inside the TCP states of one FX/1 upload."""
    from filexfer import ReceiverProtocol, SenderProtocol

    sender_states = {s for t in transitions(SenderProtocol._machine) for s in (t[0], t[2])}
    receiver_states = {s for t in transitions(ReceiverProtocol._machine) for s in (t[0], t[2])}
    sender_open = sorted(sender_states - {"done"}, key=_sender_order)
    receiver_open = sorted(receiver_states - {"closed"}, key=_receiver_order)
    tcp = 'shape=box, style="rounded,filled", fillcolor="#eeeeee", color="#888888", fontname="Helvetica-Bold"'
    lines = [
        "digraph tcp {",
        '  graph [compound=true, rankdir=TB, fontname="Helvetica", nodesep=0.35, ranksep=0.3, newrank=true];',
        '  node [fontname="Helvetica", fontsize=11, shape=ellipse, color="#1f5fa8"];',
        '  edge [fontname="Helvetica", fontsize=9];',
        '  subgraph cluster_sender { label="filexfer send (SenderProtocol)"; fontname="Helvetica-Bold"; color="#cccccc";',
        f"    s_CLOSED [label=CLOSED, {tcp}]; s_SYN_SENT [label=SYN_SENT, {tcp}];",
        f"    s_LAST_ACK [label=LAST_ACK, {tcp}];",
        f"    s_CLOSED2 [label=CLOSED, {tcp}];",
        *_cluster("s_est", "ESTABLISHED", sender_open, "s", "#2e7d32"),
        *_cluster(
            "s_cw", "CLOSE_WAIT (the receiver's FIN came with done)", ["done"], "s", "#b26a00"
        ),
        "  }",
        '  subgraph cluster_receiver { label="twistd filexfer (ReceiverProtocol)"; fontname="Helvetica-Bold"; color="#cccccc";',
        f"    r_LISTEN [label=LISTEN, {tcp}]; r_SYN_RCVD [label=SYN_RCVD, {tcp}];",
        f'    r_FIN_WAIT_2 [label=FIN_WAIT_2, {tcp}]; r_TIME_WAIT [label="TIME_WAIT (2 MSL)", {tcp}];',
        f"    r_CLOSED [label=CLOSED, {tcp}];",
        *_cluster("r_est", "ESTABLISHED", receiver_open, "r", "#2e7d32"),
        *_cluster(
            "r_fw", "FIN_WAIT_1 (done written, then the half-close)", ["closed"], "r", "#b26a00"
        ),
        "  }",
        # the TCP states' own order
        '  s_CLOSED -> s_SYN_SENT [label="connect: SYN"];',
        f'  s_SYN_SENT -> s_{sender_open[0]} [label="SYN+ACK", lhead=cluster_s_est];',
        '  s_done -> s_LAST_ACK [label="loseConnection: FIN", ltail=cluster_s_cw];',
        "  s_LAST_ACK -> s_CLOSED2 [label=ACK];",
        "  r_LISTEN -> r_SYN_RCVD [label=SYN];",
        f"  r_SYN_RCVD -> r_{receiver_open[0]} [label=ACK, lhead=cluster_r_est];",
        "  r_closed -> r_FIN_WAIT_2 [label=ACK, ltail=cluster_r_fw];",
        '  r_FIN_WAIT_2 -> r_TIME_WAIT [label="the sender\'s FIN"];',
        '  r_TIME_WAIT -> r_CLOSED [label="2 MSL later"];',
    ]
    _machine_edges(SenderProtocol._machine, "s", lines)
    _machine_edges(ReceiverProtocol._machine, "r", lines)
    message = 'style=dashed, color="#7b1fa2", fontcolor="#7b1fa2", constraint=false'
    lines += [
        f'  s_handshake -> r_handshake [label="FX/1 PUT path, Size, SHA256", {message}];',
        f'  r_starting -> s_handshake [label="ok <offset> [<prefix>]", {message}];',
        f'  s_pulling -> r_streaming [label="bytes [offset, Size), then SHA256: <hex>", {message}];',
        f'  r_closed -> s_done [label="done <size> <sha256> <path>, FIN", {message}];',
        "}",
    ]
    return "\n".join(lines) + "\n"


_SENDER_ORDER = [
    "handshake",
    "checking_prefix",
    "pulling",
    "threaded",
    "confirmed_early",
    "confirming",
]
_RECEIVER_ORDER = ["handshake", "starting", "streaming", "trailer", "finishing"]


def _sender_order(state: str) -> int:
    return _SENDER_ORDER.index(state) if state in _SENDER_ORDER else len(_SENDER_ORDER)


def _receiver_order(state: str) -> int:
    return _RECEIVER_ORDER.index(state) if state in _RECEIVER_ORDER else len(_RECEIVER_ORDER)


# -- the module map -----------------------------------------------------------------


def module_imports(package: str = PACKAGE) -> dict[str, set[str]]:
    """Each module of the package (dotted, without 'filexfer.') -> the package modules it imports."""
    modules: dict[str, str] = {}
    for folder, _, files in os.walk(package):
        for name in files:
            if name.endswith(".py"):
                path = os.path.join(folder, name)
                relative = os.path.relpath(path, os.path.dirname(package))[: -len(".py")]
                dotted = relative.replace(os.sep, ".").removesuffix(".__init__")
                modules[dotted] = path
    graph: dict[str, set[str]] = {}
    for dotted, path in sorted(modules.items()):
        with open(path, encoding="utf-8") as handle:
            tree = ast.parse(handle.read(), path)
        is_package = path.endswith("__init__.py")
        here = dotted if is_package else dotted.rpartition(".")[0]
        targets: set[str] = set()
        for node in ast.walk(tree):
            names: list[str] = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    parts = here.split(".")
                    parts = parts[: len(parts) - node.level + 1]
                    base = ".".join([*parts, base] if base else parts)
                names = [f"{base}.{alias.name}" for alias in node.names] + [base]
            for name in names:
                while name and name not in modules:
                    name = name.rpartition(".")[0]
                if name and name != dotted and name.startswith("filexfer"):
                    targets.add(name)
        # `from filexfer.tcp import sender` names both the package and the module: keep the module
        graph[dotted] = {t for t in targets if not any(o.startswith(t + ".") for o in targets)}
    return graph


def module_map_source() -> str:
    """The DOT of the module map: one box per module, grouped by subpackage."""
    graph = module_imports()
    groups: dict[str, list[str]] = defaultdict(list)
    for module in graph:
        parts = module.split(".")
        group = (
            parts[1]
            if len(parts) > 2 or (len(parts) == 2 and f"{module}.__init__" in graph)
            else ""
        )
        if len(parts) == 2 and any(m.startswith(module + ".") for m in graph):
            group = parts[1]
        groups[group].append(module)
    lines = [
        "digraph modules {",
        '  graph [rankdir=LR, fontname="Helvetica", ranksep=1.2, nodesep=0.12, concentrate=true];',
        '  node [shape=box, style="rounded,filled", fillcolor="#f5f5f5", fontname="Helvetica", fontsize=10];',
        '  edge [color="#00000055", arrowsize=0.5];',
    ]
    colors = {"tcp": "#e3f2fd", "tftp": "#e8f5e9", "storage": "#fff3e0"}
    for group, members in sorted(groups.items()):
        if group:
            lines.append(
                f'  subgraph cluster_{group} {{ label="filexfer.{group}"; style=rounded; fontname="Helvetica-Bold";'
            )
        for module in sorted(members):
            short = module.removeprefix("filexfer.") or "filexfer"
            if module == "filexfer":
                short = "filexfer (public API)"
            fill = colors.get(group, "#f5f5f5")
            lines.append(f"    {_quote(module)} [label={_quote(short)}, fillcolor={_quote(fill)}];")
        if group:
            lines.append("  }")
    for module, targets in sorted(graph.items()):
        for target in sorted(targets):
            lines.append(f"  {_quote(module)} -> {_quote(target)};")
    lines.append("}")
    return "\n".join(lines) + "\n"


def draw_all(folder: str) -> None:
    """Every picture of this module, into C{folder}."""
    from filexfer import ReceiverProtocol, SenderProtocol

    draw_machine(ReceiverProtocol._machine, os.path.join(folder, "receiver-machine.svg"))
    draw_machine(SenderProtocol._machine, os.path.join(folder, "sender-machine.svg"))
    render(tcp_states_source(), os.path.join(folder, "tcp-states.svg"))
    render(module_map_source(), os.path.join(folder, "module-map.svg"))
