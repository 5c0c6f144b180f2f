"""The plain Streamlit way to page through a KB: bench/bench_app.py's baseline for the KB page.

The same widgets the app's KB page uses (st.pagination, st.dataframe of 50 rows with a caption
"1–50 of N matching entries"), over a plain sqlite3 query of the same workspace's kb.sqlite: no
filters, facets, quality flags, impact columns or selection. It is Streamlit's own floor for
showing that page, so our page's time / this page's time is what the app adds on top.

    streamlit run bench/_plain_kb_app.py     (with NESY_HOME set; bench_app.py starts it)
"""

import math
import os
import sqlite3

import pandas as pd
import streamlit as st

PAGE = 50
con = sqlite3.connect(os.path.join(os.environ["NESY_HOME"], "kb.sqlite"))
total = con.execute("SELECT count(*) FROM entries WHERE deleted = 0").fetchone()[0]
page = st.pagination(max(1, math.ceil(total / PAGE)), key="page")
first = (page - 1) * PAGE
st.caption(f"{first + 1}–{min(first + PAGE, total)} of {total} matching entries")
st.dataframe(
    pd.read_sql_query(
        "SELECT id, title, status, json_extract(data, '$.learning_summary') AS summary, task, updated_at "
        "FROM entries WHERE deleted = 0 ORDER BY updated_at DESC, id LIMIT ? OFFSET ?",
        con,
        params=(PAGE, first),
    ),
    hide_index=True,
)
