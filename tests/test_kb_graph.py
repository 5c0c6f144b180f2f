"""KB graph: structure, semantic edges, focus, size cap, offline HTML with all user text escaped."""

from __future__ import annotations

import json
import re

import pytest

from kb.graph import build_graph, cap_graph, focus_subgraph, render_html
from kb.index import KBIndex
from kb.schema import Entry
from kb.store import KBStore

EVIL = "<script>alert(1)</script>"


def add(store: KBStore, entry_id: str, **fields) -> None:
    base = dict(
        id=entry_id,
        task="gsm8k",
        learning_summary=f"summary {entry_id}",
        supplementary_knowledge=f"knowledge {entry_id}",
        status="accepted",
    )
    store.add(Entry(**{**base, **fields}), by="t")


@pytest.fixture
def store() -> KBStore:
    store = KBStore()
    add(store, "a", concepts=["area", "circle"], links=["b", "gone"])
    add(store, "b", concepts=["Area"], status="pending")
    add(store, "c", task="bbh", status="rejected")
    return store


def test_graph_has_entries_tasks_concepts_and_links(store):
    graph = build_graph(store)
    assert graph.nodes["entry:a"]["type"] == "entry" and graph.nodes["entry:c"]["status"] == "rejected"
    assert {n for n, d in graph.nodes(data=True) if d["type"] == "concept"} == {
        "concept:area",
        "concept:circle",
    }  # concepts match case-insensitively
    assert graph.edges["entry:a", "entry:b"]["kind"] == "link"
    assert "entry:gone" not in graph  # a link to a missing entry adds no node
    assert graph.edges["entry:c", "task:bbh"]["kind"] == "task"
    only_accepted = build_graph(store, status="accepted")
    assert {n for n in only_accepted if n.startswith("entry:")} == {"entry:a"}


def test_semantic_neighbour_edges_above_threshold(store, tmp_path):
    # a, b and c say nearly the same thing ("summary a" / "summary b"): their similarity is high
    add(
        store,
        "speed",
        learning_summary="Average speed is total distance divided by total time.",
        supplementary_knowledge="speed = distance / time",
    )
    add(
        store,
        "speed-2",
        learning_summary="Speed on average is the whole distance over the whole time taken.",
        supplementary_knowledge="average speed = distance / time",
    )
    graph = build_graph(store, KBIndex(store), neighbour_threshold=0.8)
    similar = {tuple(sorted((a, b))) for a, b, d in graph.edges(data=True) if d["kind"] == "similar"}
    assert ("entry:speed", "entry:speed-2") in similar
    assert not any("entry:speed" in pair and "entry:speed-2" not in pair for pair in similar)
    link = graph.edges["entry:a", "entry:b"]
    assert link["kind"] == "link" and link["score"] >= 0.8  # a link is not demoted to "similar"
    assert (
        build_graph(store, KBIndex(store), neighbour_threshold=0.999).number_of_edges()
        == build_graph(store).number_of_edges()
    )


def test_focus_and_cap(store):
    graph = build_graph(store)
    near_c = focus_subgraph(graph, "c", depth=1)
    assert set(near_c) == {"entry:c", "task:bbh"}
    with pytest.raises(KeyError, match="nope"):
        focus_subgraph(graph, "nope")
    capped, note = cap_graph(graph, 3)
    assert capped.number_of_nodes() == 3 and f"has {graph.number_of_nodes()} nodes" in note
    assert cap_graph(graph, 100) == (graph, None)
    page = render_html(graph, max_nodes=3)
    assert "showing the 3 most connected" in page


def test_html_escapes_all_user_text_and_works_offline(store):
    add(
        store,
        "x",
        title=EVIL,
        concepts=['<img src=x onerror="alert(2)">'],
        learning_summary="a </script><b>bold</b> & more",
        task="<i>task</i>",
    )
    page = render_html(build_graph(store))
    assert EVIL not in page and "<img src=x" not in page and "<b>bold</b>" not in page
    assert "<i>task</i>" not in page and "</script><b>" not in page
    # the text is still there, as data, and shows as text (vis-network uses innerText)
    nodes = json.loads(re.search(r"nodes = new vis\.DataSet\((\[.*?\])\);", page).group(1))
    labels = {n["id"]: n for n in nodes}
    assert labels["entry:x"]["label"] == EVIL and "bold</b> & more" in labels["entry:x"]["title"]
    assert not re.search(r'(src|href)="https?://', page)  # vis-network is inlined
    assert "vis.Network" in page and "nesy-graph-legend" in page


def test_focus_in_render(store):
    page = render_html(build_graph(store), focus="c")
    nodes = json.loads(re.search(r"nodes = new vis\.DataSet\((\[.*?\])\);", page).group(1))
    assert {n["id"] for n in nodes} == {"entry:c", "task:bbh"}


@pytest.mark.parametrize("nodes, before_draw", [(100, 200), (2000, 10)])
def test_a_big_graph_is_drawn_after_few_rounds_and_always_gets_the_same_200(nodes, before_draw):
    """Interactive within seconds at 2,000 nodes: few stabilisation rounds before the first draw,
    the rest live, counted (not timed), so every session ends in the same layout."""
    import networkx as nx

    page = render_html(nx.path_graph([f"c{i}" for i in range(nodes)]), max_nodes=nodes)
    options = json.loads(re.search(r"var options = (\{.*?\});\n", page, re.S).group(1))
    assert options["physics"]["stabilization"]["iterations"] == before_draw
    assert f"var live = {200 - before_draw};" in page
