"""Graph: entries with their tasks, concepts, links and semantic neighbours; focus and edit beside it.

The pyvis page comes from kb.graph.render_html (escapes all KB text, works offline, seeded layout
with physics off once settled). It is shown by ui.graph_view, a small bidirectional component:
clicking an entry node opens it in the editor beside the graph; clicking a task or concept node
focuses on it. The selectbox beside the graph lists exactly the entries drawn.
"""

from __future__ import annotations

import streamlit as st

import ui
from kb import graph as kbgraph
from kb.schema import STATUSES

ANY = "(any)"
WHOLE = "(whole graph)"

kb = ui.store()


@st.cache_resource(show_spinner="Building the graph…", max_entries=8)
def full_graph(
    db: str, seq: int, impact: str, status: tuple, task: str | None, concept: str | None, neighbours: float | None
):
    """The graph for these filters at this KB change sequence and impact stamp (a new edit or a
    new evaluation's impact = a new key)."""
    index = ui.index() if neighbours else None
    return kbgraph.build_graph(
        kb, index, neighbour_threshold=neighbours or 0.8, status=list(status) or None, task=task, concept=concept
    )


@st.cache_data(show_spinner="Drawing…", max_entries=8)
def page_html(db: str, seq: int, key: tuple, _shown) -> str:
    return kbgraph.render_html(_shown, max_nodes=_shown.number_of_nodes() or 1, height="700px")


st.title("Graph")
if ui.stats()["total"] == 0:
    st.info(
        "Nothing to draw yet: the knowledge base is empty. Import or add entries on the "
        "**Knowledge base** or **Export / import** pages."
    )
    st.stop()

facets = ui.facets()
c = st.columns([2, 2, 2, 2])
status = c[0].multiselect("Status", STATUSES, key="graph:status")
task = c[1].selectbox("Task", [ANY, *facets["tasks"]], key="graph:task")
concept = c[2].selectbox("Concept", [ANY, *facets["concepts"]], key="graph:concept")
max_nodes = c[3].number_input("Max nodes", 50, 5000, 2000, step=50, key="graph:max")
n = st.columns([2, 2, 1, 1])
search = n[0].text_input("Find a node", key="graph:find", placeholder="id, title, task or concept")
similar = n[3].toggle(
    "Similarity edges",
    key="graph:similar",
    help="Dashed edges between entries whose embeddings are close (uses the index).",
)
threshold = n[2].slider("Similarity ≥", 0.5, 0.99, 0.85, key="graph:threshold") if similar else None

seq = ui.stats()["seq"]
db = str(ui.home())
g = full_graph(
    db,
    seq,
    kb.impact_stamp(),
    tuple(status),
    None if task == ANY else task,
    None if concept == ANY else concept,
    threshold,
)
needle = search.strip().lower()
matches = [
    node
    for node, data in g.nodes(data=True)
    if needle and (needle in node.lower() or needle in str(data.get("label", "")).lower())
]
requested = st.session_state.pop("graph:focus-request", None)
if requested in g:  # a task or concept clicked in the graph
    matches = list(dict.fromkeys([requested, *matches]))
    st.session_state["graph:focus"] = requested
focus = n[1].selectbox(
    f"Focus ({len(matches)} match{'es' if len(matches) != 1 else ''})", [WHOLE, *matches[:200]], key="graph:focus"
)
depth = st.slider("Neighbourhood depth", 1, 4, 1, key="graph:depth") if focus != WHOLE else 1

shown = g if focus == WHOLE else kbgraph.focus_subgraph(g, focus, depth)
shown, note = kbgraph.cap_graph(shown, int(max_nodes))
if note:
    st.info(note)
entries = sorted(node.removeprefix("entry:") for node, d in shown.nodes(data=True) if d.get("type") == "entry")
st.caption(
    f"{shown.number_of_nodes()} of {g.number_of_nodes()} nodes shown ({len(entries)} "
    f"entries), {shown.number_of_edges()} edges. Click an entry to edit it, a task or "
    "concept to focus on it; drag to move, scroll to zoom, hover for the full text."
)

left, right = st.columns([3, 2])
with left:
    html = page_html(
        db, seq, (kb.impact_stamp(), tuple(status), task, concept, threshold, focus, depth, max_nodes), shown
    )
    clicked = ui.graph_view(html, key="graph:canvas")
if clicked and clicked.startswith("entry:") and clicked.removeprefix("entry:") in entries:
    st.session_state["graph:node"] = clicked.removeprefix("entry:")
elif clicked and clicked in g and focus != clicked:
    st.session_state["graph:focus-request"] = clicked  # applied before the focus box next run
    st.rerun()
with right:
    st.subheader("Edit an entry")
    if not entries:
        st.caption("No entries in this view.")
    else:
        default = focus.removeprefix("entry:") if focus.startswith("entry:") else None
        if default in entries and st.session_state.get("graph:last-focus") != focus:
            st.session_state["graph:node"] = default  # focusing an entry opens it
        st.session_state["graph:last-focus"] = focus
        if st.session_state.get("graph:node") not in entries:
            st.session_state.pop("graph:node", None)  # filtered out of this view
        node = st.selectbox("Entry in this view", entries, key="graph:node")
        ui.entry_editor(kb, node, key="graph-editor")
