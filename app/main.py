"""NeSy Studio: `streamlit run app/main.py`. The router: one module per page under app/views/.

The folder is not called pages/: Streamlit treats a pages/ folder beside the entry script as a
v1 multipage app and runs the FIRST session of a fresh server through it (a page script alone,
without this router), whatever st.navigation says.
"""

from __future__ import annotations

import sys
from pathlib import Path

import streamlit as st

APP_DIR = str(Path(__file__).parent)
if APP_DIR not in sys.path:  # `streamlit run` puts app/ on sys.path; other launchers may not
    sys.path.insert(0, APP_DIR)

import ui  # noqa: E402

ICON = str(Path(__file__).parent / "static" / "favicon.png")
# A local image: a material or emoji page_icon makes the browser fetch the favicon from a CDN.
st.set_page_config(page_title=ui.PRODUCT, page_icon=ICON, layout="wide")

pages = {
    "Knowledge": [
        st.Page(ui.PAGES["kb"], title="Knowledge base", icon=":material/library_books:", default=True),
        st.Page(ui.PAGES["graph"], title="Graph", icon=":material/hub:"),
        st.Page(ui.PAGES["transfer"], title="Export / import", icon=":material/swap_vert:"),
    ],
    "Distil": [
        st.Page(ui.PAGES["distill"], title="Teacher jobs", icon=":material/school:"),
        st.Page(ui.PAGES["train"], title="Train student", icon=":material/model_training:"),
        st.Page(ui.PAGES["jobs"], title="Jobs", icon=":material/work:"),
    ],
    "Evaluate": [
        st.Page(ui.PAGES["compare"], title="Compare answers", icon=":material/compare:"),
        st.Page(ui.PAGES["evaluate"], title="Evaluation results", icon=":material/insights:"),
    ],
}
page = st.navigation(pages)
st.set_page_config(page_icon=ICON)  # again after st.navigation: a page's own icon would replace it
ui.welcome(page.url_path)
ui.sidebar_user()
st.sidebar.caption(f"Workspace: {ui.home()}")
page.run()
