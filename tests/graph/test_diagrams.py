"""Mermaid and DOT diagrams drawn from the graph description (``Chain.describe()`` / graph.json)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from typing import Any

import pytest
from pydantic import BaseModel
from tests.helpers import Answer, Question, Summary, Translation

from chainette import Branch, Chain, Step, apply
from chainette.graph.diagrams import to_dot, to_mermaid

DOT = shutil.which("dot")
needs_graphviz = pytest.mark.skipif(DOT is None, reason="Graphviz `dot` is not installed")


class Merged(BaseModel):
    text: str


def tidy(answer: Answer) -> Answer:
    return answer


def merge(answer: Answer) -> Merged:
    return Merged(text=answer.answer)


def step(id: str, input_model: type[BaseModel], output_model: type[BaseModel], **kw: Any) -> Step:
    return Step(
        id=id,
        input_model=input_model,
        output_model=output_model,
        engine_name="fake",
        user_prompt="{{ input.text }}",
        **kw,
    )


def straight_chain() -> Chain:
    return Chain(
        name="straight",
        steps=[step("qa", Question, Answer), apply(tidy), step("summarize", Answer, Summary)],
    )


def branched_chain() -> Chain:
    """Two joined branches (french, spanish) and an unjoined one (notes), then a join."""
    return Chain(
        name="branched",
        steps=[
            step("qa", Question, Answer),
            [
                Branch(name="french", steps=[step("to_fr", Answer, Translation)]).join("fr"),
                Branch(name="spanish", steps=[step("to_es", Answer, Translation)]).join("es"),
                Branch(name="notes", steps=[step("note", Answer, Summary)]),
            ],
            apply(merge),
        ],
    )


STRAIGHT_EDGES = {("input", "qa"), ("qa", "tidy"), ("tidy", "summarize")}
BRANCHED_EDGES = {
    ("input", "qa"),
    ("qa", "to_fr"),
    ("qa", "to_es"),
    ("qa", "note"),
    ("qa", "merge"),
    ("to_fr", "merge"),
    ("to_es", "merge"),
}


# --- reading the diagrams back -------------------------------------------------------------------


def mermaid_edges(text: str) -> set[tuple[str, str]]:
    return set(re.findall(r"^\s*(\w+) -->(?:\|\"[^\"]*\"\|)? (\w+)$", text, re.M))


def mermaid_subgraphs(text: str) -> dict[str, list[str]]:
    """Subgraph title → ids of the nodes declared directly inside it."""
    found: dict[str, list[str]] = {}
    stack: list[str] = []
    for line in text.splitlines():
        if m := re.match(r'\s*subgraph \w+ \["(.*)"\]$', line):
            stack.append(m.group(1))
            found[m.group(1)] = []
        elif line.strip() == "end":
            stack.pop()
        elif stack and (m := re.match(r"\s*(\w+)[\[(]", line)):
            found[stack[-1]].append(m.group(1))
    assert not stack, "unclosed subgraph"
    return found


def dot_tokens(text: str) -> list[str]:
    """DOT tokens: quoted strings (kept quoted, escapes as written), punctuation, bare words."""
    tokens = []
    i = 0
    while i < len(text):
        char = text[i]
        if char.isspace():
            i += 1
        elif char == '"':
            j = i + 1
            while text[j] != '"':
                j += 2 if text[j] == "\\" else 1  # an escaped quote or backslash never ends it
            tokens.append(text[i : j + 1])
            i = j + 1
        elif text.startswith("->", i):
            tokens.append("->")
            i += 2
        elif char in "{}[];,=":
            tokens.append(char)
            i += 1
        else:
            m = re.compile(r"[\w.]+").match(text, i)
            assert m, f"unexpected character {char!r} at {i}"
            tokens.append(m.group())
            i = m.end()
    return tokens


def dot_structure(text: str) -> tuple[set[str], set[tuple[str, str]], dict[str, set[str]]]:
    """Check the DOT text's structure in pure Python and return (node ids, edges, cluster → nodes).

    Braces balance (outside quoted strings), every statement ends with ``;`` or a brace, every
    node is declared once with a label, and every edge's ends are declared nodes.
    """
    tokens = dot_tokens(text)
    assert tokens[:3] == ["digraph", tokens[1], "{"] and tokens[1].startswith('"')
    assert tokens[-1] == "}"
    depth, nodes, edges = 0, [], set()
    clusters: dict[str, set[str]] = {}
    open_clusters: list[str] = []
    i = 2
    while i < len(tokens):
        token = tokens[i]
        if token == "{":
            depth += 1
            i += 1
        elif token == "}":
            depth -= 1
            assert depth >= 0, "unbalanced braces"
            if open_clusters and depth == len(open_clusters):
                open_clusters.pop()
            i += 1
        elif token == "subgraph":
            assert tokens[i + 1].startswith('"cluster_') and tokens[i + 2] == "{"
            open_clusters.append(tokens[i + 1].strip('"'))
            clusters[open_clusters[-1]] = set()
            i += 2
        elif token in ("graph", "node", "edge") or tokens[i + 1] == "=":  # attribute statements
            end = tokens.index(";", i)
            i = end + 1
        elif tokens[i + 1] == "->":
            assert tokens[i + 2].startswith('"'), "edge ends are quoted"
            edges.add((json.loads(token), json.loads(tokens[i + 2])))
            end = tokens.index(";", i)
            i = end + 1
        else:
            assert token.startswith('"') and tokens[i + 1] == "[", f"node statement expected at {token}"
            end = tokens.index("]", i)
            assert "label" in tokens[i:end] and tokens[end + 1] == ";"
            nodes.append(json.loads(token))
            for name in open_clusters:
                clusters[name].add(nodes[-1])
            i = end + 2
    assert depth == 0, "unbalanced braces"
    assert len(nodes) == len(set(nodes)), "a node is declared twice"
    undeclared = {end for edge in edges for end in edge} - set(nodes)
    assert not undeclared, f"edges reach undeclared nodes: {undeclared}"
    return set(nodes), edges, clusters


def graphviz_render(text: str) -> dict[str, Any]:
    """Lay the DOT text out with the real Graphviz: its nodes (rendered label lines), clusters, edges."""
    assert DOT is not None
    svg = subprocess.run([DOT, "-Tsvg"], input=text, capture_output=True, text=True, timeout=30)
    assert svg.returncode == 0 and svg.stderr == "", svg.stderr
    assert svg.stdout.lstrip().startswith("<?xml") and "</svg>" in svg.stdout
    out = subprocess.run([DOT, "-Tjson"], input=text, capture_output=True, text=True, timeout=30)
    assert out.returncode == 0 and out.stderr == "", out.stderr
    graph = json.loads(out.stdout)
    objects = graph.get("objects", [])
    by_gvid = {o["_gvid"]: o for o in objects}

    def lines(obj: dict[str, Any]) -> list[str]:
        return [d["text"] for d in obj.get("_ldraw_", []) if d["op"] == "T"]

    return {
        "nodes": {o["name"]: lines(o) for o in objects if "nodes" not in o},
        "clusters": {lines(o)[0]: {by_gvid[n]["name"] for n in o["nodes"]} for o in objects if "nodes" in o},
        "edges": {(by_gvid[e["tail"]]["name"], by_gvid[e["head"]]["name"]) for e in graph.get("edges", [])},
        "title": lines(graph),
    }


# --- Mermaid ------------------------------------------------------------------------------------


def test_mermaid_straight_chain() -> None:
    assert straight_chain().to_mermaid() == "\n".join(
        [
            "flowchart LR",
            '  input(["input"])',
            '  qa["qa"]',
            '  tidy[/"tidy"/]',
            '  summarize["summarize"]',
            "  input --> qa",
            "  qa --> tidy",
            "  tidy --> summarize",
        ]
    )


def test_mermaid_branches_are_subgraphs_and_edges_are_the_described_ones() -> None:
    text = branched_chain().to_mermaid()

    assert mermaid_edges(text) == BRANCHED_EDGES
    assert len(re.findall(r"-->", text)) == len(BRANCHED_EDGES)
    assert mermaid_subgraphs(text) == {
        "branch french (joined as fr)": ["to_fr"],
        "branch spanish (joined as es)": ["to_es"],
        "branch notes (side output)": ["note"],
    }
    assert '  merge[/"merge"/]' in text.splitlines()  # after the branches, outside any subgraph


def test_chain_methods_draw_their_description() -> None:
    chain = branched_chain()
    assert chain.to_mermaid() == to_mermaid(chain.describe())
    assert chain.to_dot() == to_dot(chain.describe())
    # graph.json round trip: the written file draws the same diagram
    assert to_dot(json.loads(json.dumps(chain.describe()))) == chain.to_dot()


def test_mermaid_escapes_names_and_renames_unsafe_ids() -> None:
    graph = {
        "nodes": [
            {"id": "end", "kind": "step", "name": 'say "hi" #1 <b>&`x`: a\nb'},
            {"id": "n_end", "kind": "apply", "name": "n_end"},
            {"id": "odd-id", "kind": "step", "name": "odd"},
        ],
        "edges": [
            {"from": "input", "to": "end"},
            {"from": "end", "to": "n_end"},
            {"from": "n_end", "to": "odd-id"},
        ],
    }

    lines = to_mermaid(graph).splitlines()

    # `end` is a Mermaid keyword and `odd-id` not an identifier: both get fresh, unique ids
    assert '  n_end_1["say #34;hi#34; #35;1 #60;b#62;#38;#96;x#96;#58; a<br/>b"]' in lines
    assert '  n_end[/"n_end"/]' in lines
    assert '  n_odd_id["odd"]' in lines
    assert mermaid_edges("\n".join(lines)) == {
        ("input", "n_end_1"),
        ("n_end_1", "n_end"),
        ("n_end", "n_odd_id"),
    }


def test_mermaid_direction() -> None:
    assert to_mermaid(straight_chain().describe(), direction="TB").startswith("flowchart TB\n")
    with pytest.raises(ValueError, match="direction"):
        to_mermaid(straight_chain().describe(), direction="sideways")


# --- DOT ----------------------------------------------------------------------------------------


def test_dot_straight_chain() -> None:
    text = straight_chain().to_dot()

    assert text.startswith('digraph "straight" {\n')
    assert '  "qa" [label="qa", shape=box];' in text.splitlines()
    assert '  "tidy" [label="tidy", shape=parallelogram];' in text.splitlines()
    assert '  "input" [label="input", shape=ellipse];' in text.splitlines()
    nodes, edges, clusters = dot_structure(text)
    assert nodes == {"input", "qa", "tidy", "summarize"}
    assert edges == STRAIGHT_EDGES
    assert clusters == {}


def test_dot_branches_are_clusters_and_edges_are_the_described_ones() -> None:
    text = branched_chain().to_dot()

    nodes, edges, clusters = dot_structure(text)
    assert nodes == {"input", "qa", "to_fr", "to_es", "note", "merge"}
    assert edges == BRANCHED_EDGES
    assert len(re.findall(r"->", text)) == len(BRANCHED_EDGES)
    assert clusters == {"cluster_0": {"to_fr"}, "cluster_1": {"to_es"}, "cluster_2": {"note"}}
    assert 'label="branch french (joined as fr)";' in text
    assert 'label="branch notes (side output)";' in text


def test_dot_escapes_ids_and_labels() -> None:
    graph = {
        "name": 'my "chain"',
        "nodes": [{"id": 'we"ird\\', "kind": "step", "name": 'say "hi" \\N &amp; <b>\nnext'}],
        "edges": [{"from": "input", "to": 'we"ird\\'}],
    }

    text = to_dot(graph)

    assert text.startswith('digraph "my \\"chain\\"" {')
    assert '  "we\\"ird\\\\" [label="say \\"hi\\" \\\\N &amp;amp; <b>\\nnext", shape=box];' in text
    nodes, edges, _ = dot_structure(text)
    assert nodes == {"input", 'we"ird\\'}
    assert edges == {("input", 'we"ird\\')}


# --- nested constructs (node dicts with "parent"), unknown kinds --------------------------------

NESTED = {
    "name": "nested",
    "nodes": [
        {"id": "route", "kind": "router", "name": "route", "parent": None},
        {"id": "loop", "kind": "loop", "name": "refine", "parent": None},
        {"id": "draft", "kind": "step", "name": "draft", "parent": "loop"},
        {"id": "group", "kind": "group", "name": "checks", "parent": "loop"},
        {"id": "spell", "kind": "apply", "name": "spell", "parent": "group"},
        {"id": "facts", "kind": "step", "name": "facts", "parent": "group"},
        {"id": "lost", "kind": "map", "name": "lost", "parent": "nowhere"},
        {"id": "out", "kind": "output", "name": "output"},
    ],
    "edges": [
        {"from": "input", "to": "route"},
        {"from": "route", "to": "loop", "label": "long"},
        {"from": "loop", "to": "draft"},
        {"from": "draft", "to": "spell"},
        {"from": "draft", "to": "facts"},
        {"from": "spell", "to": "lost"},
        {"from": "facts", "to": "lost"},
        {"from": "lost", "to": "out"},
    ],
}
NESTED_EDGES = {(e["from"], e["to"]) for e in NESTED["edges"]}


def test_nested_parents_are_nested_subgraphs_in_mermaid() -> None:
    text = to_mermaid(NESTED)

    assert mermaid_edges(text) == NESTED_EDGES
    assert '  route -->|"long"| loop' in text.splitlines()
    assert mermaid_subgraphs(text) == {
        "loop refine": ["loop", "draft"],  # the loop node has edges: drawn inside its own subgraph
        "group checks": ["spell", "facts"],  # the group node has none: its subgraph stands for it
        "nowhere": ["lost"],  # a parent that is not a node still groups its children
    }
    assert re.search(r"subgraph sg_0 .*\n.*\n.*\n\s+subgraph sg_1 \[\"group checks\"\]", text)
    assert '  route("route<br/>(router)")' in text  # unknown kind: default shape, kind shown
    assert '  out(["output"])' in text


def test_nested_parents_are_nested_clusters_in_dot() -> None:
    text = to_dot(NESTED)

    nodes, edges, clusters = dot_structure(text)
    assert nodes == {"input", "route", "loop", "draft", "spell", "facts", "lost", "out"}  # no "group"
    assert edges == NESTED_EDGES
    assert clusters == {
        "cluster_0": {"loop", "draft", "spell", "facts"},
        "cluster_1": {"spell", "facts"},
        "cluster_2": {"lost"},
    }
    assert '"route" [label="route\\n(router)", shape=box, style="rounded"];' in text
    assert '"route" -> "loop" [label="long"];' in text


def test_parent_cycles_and_missing_keys_do_not_break_drawing() -> None:
    graph = {
        "nodes": [
            {"id": "a", "kind": "loop", "name": "a", "parent": "b"},
            {"id": "b", "kind": "loop", "name": "b", "parent": "a"},
            {"id": "c", "parent": "c"},
        ],
        "edges": [{"from": "a", "to": "b"}, {"from": "b", "to": "c"}],
    }

    nodes, edges, _ = dot_structure(to_dot(graph))
    assert nodes == {"a", "b", "c"} and edges == {("a", "b"), ("b", "c")}
    assert mermaid_edges(to_mermaid(graph)) == {("a", "b"), ("b", "c")}


# --- the real Graphviz ---------------------------------------------------------------------------


@needs_graphviz
@pytest.mark.parametrize("name", ["straight", "branched"])
def test_graphviz_lays_out_chains_as_described(name: str) -> None:
    chain = straight_chain() if name == "straight" else branched_chain()

    rendered = graphviz_render(chain.to_dot())

    described = chain.describe()
    assert rendered["edges"] == {(e["from"], e["to"]) for e in described["edges"]}
    assert set(rendered["nodes"]) == {"input"} | {n["id"] for n in described["nodes"]}
    assert rendered["title"] == [name]
    if name == "branched":
        assert rendered["clusters"] == {
            "branch french (joined as fr)": {"to_fr"},
            "branch spanish (joined as es)": {"to_es"},
            "branch notes (side output)": {"note"},
        }


@needs_graphviz
def test_graphviz_renders_free_text_names_as_written() -> None:
    graph = {
        "name": 'the "chain" \\G',
        "nodes": [
            {"id": "a", "kind": "step", "name": 'say "hi" \\N &amp; <b>\nnext line'},
            {"id": 'we"ird', "kind": "apply", "name": "x", "branch": 'br"anch', "join_alias": None},
        ],
        "edges": [{"from": "input", "to": "a"}, {"from": "a", "to": 'we"ird'}],
    }

    rendered = graphviz_render(to_dot(graph))

    assert rendered["nodes"]["a"] == ['say "hi" \\N &amp; <b>', "next line"]
    assert rendered["edges"] == {("input", "a"), ("a", 'we"ird')}
    assert rendered["clusters"] == {'branch br"anch (side output)': {'we"ird'}}
    assert rendered["title"] == ['the "chain" \\G']


@needs_graphviz
def test_graphviz_lays_out_nested_constructs() -> None:
    rendered = graphviz_render(to_dot(NESTED))

    assert rendered["edges"] == NESTED_EDGES
    assert rendered["clusters"] == {
        "loop refine": {"loop", "draft", "spell", "facts"},
        "group checks": {"spell", "facts"},
        "nowhere": {"lost"},
    }
    assert rendered["nodes"]["route"] == ["route", "(router)"]


# --- a router's routes: routes that go on down the main line, not side outputs ----------------


class Ticket(BaseModel):
    text: str
    kind: str


def page(t: Ticket) -> Ticket:
    return t


def queue(t: Ticket) -> Ticket:
    return t


def after(t: Ticket) -> Ticket:
    return t


def routed_chain() -> Chain:
    from chainette import Router

    triage = Router("triage", {"page": apply(page), "queue": [apply(queue)]}, by="kind", default="queue")
    return Chain("routed", [triage, apply(after)])


def test_router_routes_are_drawn_as_routes_joining_the_main_line_in_mermaid() -> None:
    """Issue 27: each route was drawn as ``subgraph ... "branch page (side output)"``."""
    text = routed_chain().to_mermaid()
    assert "side output" not in text
    assert '["route page of triage"]' in text and '["route queue of triage"]' in text
    assert 'triage -->|"kind = page"| page' in text
    assert 'triage -->|"kind = queue (default)"| queue' in text
    assert "page --> after" in text and "queue --> after" in text  # both join the main line


def test_router_routes_are_drawn_as_routes_joining_the_main_line_in_dot() -> None:
    text = routed_chain().to_dot()
    assert "side output" not in text
    assert 'label="route page of triage";' in text and 'label="route queue of triage";' in text
    assert '"triage" -> "page" [label="kind = page"];' in text
    assert '"page" -> "after";' in text and '"queue" -> "after";' in text


def test_two_routers_with_the_same_route_names_get_a_subgraph_each() -> None:
    from chainette import Router

    first = Router("first", {"a": apply(page), "b": apply(queue)}, by="kind")
    second = Router("second", {"a": apply(after, id="after2"), "b": apply(tidy_ticket)}, by="kind")
    text = Chain("two", [first, second]).to_mermaid()
    assert '["route a of first"]' in text and '["route a of second"]' in text


def tidy_ticket(t: Ticket) -> Ticket:
    return t
