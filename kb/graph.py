"""The KB as a graph: entries, their tasks and concepts, explicit links and semantic neighbours.

Nodes are named "entry:<id>", "task:<name>", "concept:<key>" (key = concept_key(name): case and
singular/plural folded, so "Percentages" and "percentage" are one node) and carry `type`, `label`,
`tooltip` (plain text) and, for entries, `status` and `impact` (KBStore.impact: times retrieved,
answers fixed and broken by evaluations and comparisons). An entry's fill is its status; its ring
is its impact: red when it broke more answers than it fixed, blue when it fixed more, grey when
retrieved without a flip either way. Edges carry `kind`: task | concept | link |
similar (with `score`).

Rendering is a self-contained pyvis HTML page (vis-network inlined: works offline). User text is
never written into the page as markup: node data goes through Jinja's `tojson`, which escapes
< > & ' as \\u escapes, and vis-network shows labels on a canvas and tooltips via innerText, so
an entry containing `<script>` is displayed as text. Our own legend/notes are html.escape'd.
"""

from __future__ import annotations

import html
import json
import re

import networkx as nx

from kb.store import KBStore

STATUS_COLOURS = {"accepted": "#2e7d32", "pending": "#f9a825", "rejected": "#c62828"}
TYPE_STYLE = {  # type -> (colour, vis shape)
    "entry": ("#2e7d32", "dot"),
    "task": ("#6a1b9a", "box"),
    "concept": ("#1565c0", "diamond"),
}
IMPACT_RINGS = {"harmful": "#d50000", "helpful": "#0091ea", "neutral": "#757575"}  # ring colour by impact
EDGE_COLOURS = {"task": "#b39ddb", "concept": "#90caf9", "link": "#37474f", "similar": "#ff7043"}
LABEL_CHARS, TOOLTIP_CHARS = 28, 600  # labels stay short on the canvas; hover shows the whole
LAYOUT_SEED = 7  # the same graph is laid out the same way on every rerun
SINGULAR_AS_IS = {
    "mathematics",
    "physics",
    "statistics",
    "economics",
    "series",
    "species",
    "news",
    "gas",
    "bus",
    "plus",
    "minus",
    "process",
    "always",
    "its",
    "has",
    "was",
    "is",
    "this",
    "less",
}


def build_graph(
    store: KBStore, index=None, *, neighbour_threshold: float = 0.8, status=None, task=None, concept=None
) -> nx.Graph:
    """Entries matching the filters with their tasks, concepts and links; with an index, also
    'similar' edges between entries whose cosine similarity is >= neighbour_threshold."""
    graph = nx.Graph()
    entries = list(store.iter_entries(status=status, task=task, concept=concept))
    impact = store.impact() if hasattr(store, "impact") else {}
    for entry in entries:
        node = f"entry:{entry.id}"
        graph.add_node(
            node,
            type="entry",
            status=entry.status,
            label=_clip(entry.title or entry.id, LABEL_CHARS),
            tooltip=_entry_tooltip(entry, impact.get(entry.id)),
            impact=impact.get(entry.id),
        )
        _attach(graph, node, f"task:{entry.task}", "task", entry.task)
        for name in entry.concepts:
            key = concept_key(name)
            if key:
                _attach(graph, node, f"concept:{key}", "concept", key)
    for entry in entries:
        for target in entry.links:
            if f"entry:{target}" in graph:  # links to filtered-out or deleted entries are dropped
                graph.add_edge(f"entry:{entry.id}", f"entry:{target}", kind="link")
    if index is not None:
        _add_neighbours(graph, index, neighbour_threshold, status)
    return graph


def concept_key(name: str) -> str:
    """One name per concept: lower case, single spaces, each word singular ("Percentages" ->
    "percentage", "order of operations" -> "order of operation")."""
    return " ".join(_singular(word) for word in name.lower().split())


def _singular(word: str) -> str:
    if len(word) <= 3 or word in SINGULAR_AS_IS or word.endswith(("ss", "us", "is", "'s")):
        return word
    if word.endswith("ies") and len(word) > 4:
        return word[:-3] + "y"
    if word.endswith(("ches", "shes", "sses", "xes", "zzes")):
        return word[:-2]
    if word.endswith("s"):
        return word[:-1]
    return word


def focus_subgraph(graph: nx.Graph, node: str, depth: int = 1) -> nx.Graph:
    """The part of the graph within `depth` hops of a node ("entry:<id>" or a bare entry id)."""
    name = node if node in graph else f"entry:{node}"
    if name not in graph:
        raise KeyError(f"no node {node!r} in the graph")
    return nx.ego_graph(graph, name, radius=depth)


def cap_graph(graph: nx.Graph, max_nodes: int) -> tuple[nx.Graph, str | None]:
    """At most max_nodes nodes (the most connected ones), and a note saying what was cut."""
    if graph.number_of_nodes() <= max_nodes:
        return graph, None
    ranked = sorted(graph.degree, key=lambda pair: (-pair[1], pair[0]))
    kept = graph.subgraph(node for node, _ in ranked[:max_nodes]).copy()
    note = (
        f"The graph has {graph.number_of_nodes()} nodes; showing the {max_nodes} most "
        f"connected. Filter by status, task or concept, or focus on one entry, to see the rest."
    )
    return kept, note


# vis-network's defaults (improvedLayout, dynamic smooth edges, 1000 stabilisation rounds) take
# minutes to settle 2,000 nodes on 2 cores. A seeded layout: the same graph lands in the same place
# on every rerun. The graph is drawn after a short stabilisation whose length falls with its size
# (one round costs ~25 ms at 2,000 nodes here), so it can be clicked and zoomed within seconds;
# physics then runs live, one round per drawn frame, up to LAYOUT_ROUNDS in all (fully settling
# 2,000 nodes live took ~95 s), and is switched off (CLICK_SCRIPT), so nodes stay where they are
# (and where you drag them). Counting rounds, not seconds, keeps the layout the same every time.
LAYOUT_ROUNDS = 200
STABILISATION_WORK = 20_000  # node-rounds before the first draw: 200 rounds up to 100 nodes, 10 at 2,000


def stabilisation_rounds(nodes: int) -> int:
    return max(10, min(LAYOUT_ROUNDS, STABILISATION_WORK // max(nodes, 1)))


def vis_options(nodes: int) -> str:
    return json.dumps(
        {
            "layout": {"improvedLayout": False, "randomSeed": LAYOUT_SEED},
            "edges": {"smooth": {"type": "continuous"}},
            "physics": {"stabilization": {"iterations": stabilisation_rounds(nodes)}},
            "interaction": {"hover": True, "tooltipDelay": 150},
        }
    )


# Runs after pyvis's own script (which defines the global `network`): physics off after the rounds,
# and a clicked node's id posted to the embedding page (the app's graph component opens it).
CLICK_SCRIPT = """<script>
(function () {
  var live = LIVE_ROUNDS;  // physics rounds still to run after the first draw
  var settled = false;
  function settle() {  // not from inside a drawing: switching physics off redraws
    if (settled) return;
    settled = true;
    setTimeout(function () { network.setOptions({physics: false}); window.nesySettled = true; }, 0);
  }
  network.once("stabilized", settle);
  network.on("afterDrawing", function () { if (--live <= 0) settle(); });
  network.on("click", function (p) {
    if (p.nodes && p.nodes.length && window.parent !== window) {
      window.parent.postMessage({nesyGraphNode: p.nodes[0]}, "*");
    }
  });
})();
</script>"""


def render_html(
    graph: nx.Graph, *, focus: str | None = None, depth: int = 1, max_nodes: int = 2000, height: str = "720px"
) -> str:
    """A self-contained interactive HTML page (offline) with a legend and tooltips."""
    from pyvis.network import Network

    if focus is not None:
        graph = focus_subgraph(graph, focus, depth)
    graph, note = cap_graph(graph, max_nodes)
    net = Network(height=height, width="100%", cdn_resources="in_line")
    net.set_options(vis_options(graph.number_of_nodes()))
    for node, data in graph.nodes(data=True):
        net.add_node(node, **_vis_node(data))
    for a, b, data in graph.edges(data=True):
        kind = data.get("kind", "")
        title = f"similar ({data['score']:.2f})" if kind == "similar" else kind
        net.add_edge(
            a,
            b,
            color=EDGE_COLOURS.get(kind, "#999999"),
            title=title,
            dashes=kind == "similar",
            width=2 if kind == "link" else 1,
        )
    page = _strip_remote(net.generate_html())
    header = _legend() + (f'<p class="nesy-graph-note">{html.escape(note)}</p>' if note else "")
    page = page.replace("<body>", "<body>\n" + header, 1)
    head, _, tail = page.rpartition("</body>")
    live = LAYOUT_ROUNDS - stabilisation_rounds(graph.number_of_nodes())
    return head + CLICK_SCRIPT.replace("LIVE_ROUNDS", str(live)) + "\n</body>" + tail


def _attach(graph: nx.Graph, entry_node: str, node: str, kind: str, name: str) -> None:
    if node not in graph:
        graph.add_node(node, type=kind, label=_clip(name, LABEL_CHARS), tooltip=f"{kind}: {name}")
    graph.add_edge(entry_node, node, kind=kind)


def _add_neighbours(graph: nx.Graph, index, threshold: float, status) -> None:
    statuses = [status] if isinstance(status, str) else status
    for a, b, score in index.near_duplicates(threshold, statuses=statuses):
        a, b = f"entry:{a}", f"entry:{b}"
        if a not in graph or b not in graph:
            continue
        if graph.has_edge(a, b):  # an explicit link stays a link; it just learns its score
            graph.edges[a, b]["score"] = round(score, 3)
        else:
            graph.add_edge(a, b, kind="similar", score=round(score, 3))


def impact_kind(impact: dict | None) -> str | None:
    """harmful | helpful | neutral (retrieved, no net flip) | None (never retrieved)."""
    if not impact or not impact.get("retrieved"):
        return None
    net = impact.get("fixed", 0) - impact.get("broken", 0)
    return "harmful" if net < 0 else "helpful" if net > 0 else "neutral"


def _entry_tooltip(entry, impact: dict | None = None) -> str:
    parts = [entry.title or entry.id, f"id: {entry.id}", f"task: {entry.task}", f"status: {entry.status}"]
    if impact:
        shared = impact.get("fixed_shared", 0) + impact.get("broken_shared", 0)
        parts.append(
            f"impact: retrieved {impact['retrieved']}, fixed {impact['fixed']}, broke "
            f"{impact['broken']}" + (f" ({shared} shared with other entries)" if shared else "")
        )
    if entry.concepts:
        parts.append("concepts: " + ", ".join(entry.concepts))
    parts.append(entry.knowledge_text())
    return _clip("\n".join(parts), TOOLTIP_CHARS)


def _vis_node(data: dict) -> dict:
    colour, shape = TYPE_STYLE.get(data.get("type"), ("#999999", "dot"))
    if data.get("type") == "entry":
        colour = STATUS_COLOURS.get(data.get("status"), colour)
    ring = impact_kind(data.get("impact")) if data.get("type") == "entry" else None
    # label/title are plain text: vis-network draws labels on canvas and sets tooltips with
    # innerText; the template's tojson escapes them inside the <script>.
    node = {
        "label": data.get("label", ""),
        "title": data.get("tooltip", ""),
        "color": colour,
        "shape": shape,
        "size": 14 if data.get("type") == "entry" else 10,
    }
    if ring:
        node.update(color={"background": colour, "border": IMPACT_RINGS[ring]}, borderWidth=5, impact=ring)
    return node


def _legend() -> str:
    items = [(f"entry ({status})", colour, "●") for status, colour in STATUS_COLOURS.items()]
    items += [(f"ring: {kind} entry", colour, "◯") for kind, colour in IMPACT_RINGS.items()]
    items += [("task", TYPE_STYLE["task"][0], "■"), ("concept", TYPE_STYLE["concept"][0], "◆")]
    items += [(f"{kind} edge", colour, "—") for kind, colour in EDGE_COLOURS.items()]
    spans = "".join(
        f'<span style="margin-right:14px"><span style="color:{colour}">{mark}</span> {html.escape(name)}</span>'
        for name, colour, mark in items
    )
    return f'<div class="nesy-graph-legend" style="font:13px sans-serif;padding:6px">{spans}</div>'


def _strip_remote(page: str) -> str:
    # pyvis's template always links Bootstrap from a CDN (cosmetic only); offline it would hang
    # or fail, so the page keeps only what is inlined.
    page = re.sub(r'<link[^>]*href="https?://[^"]*"[^>]*>', "", page)
    return re.sub(r'<script[^>]*src="https?://[^"]*"[^>]*>\s*</script>', "", page)


def _clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"
