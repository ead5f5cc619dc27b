"""Curation: the label corrections marked on the Review page, per dataset: list them, undo them, download them as
CSV, and see which runs trained with them."""

from __future__ import annotations

import streamlit as st

from histo_core.corrections import list_corrections, remove_marks
from pages.ui.common import listed_runs, page_setup, plain, show_table, url_selectbox, user_errors
from pages.ui.curation import MARK_COLUMNS, MARK_HEADERS, marks_table


def main() -> None:
    page_setup(__file__)

    files = {c.path.stem: c for c in list_corrections() if c.path is not None}
    if not files:
        st.info(
            "No label corrections yet. On the Review page, mark a run's suspected label errors (or validation "
            "mistakes): relabel, exclude or confirm. The marks of each dataset appear here."
        )
        return

    chosen = url_selectbox(
        "Dataset",
        "corrections",
        "curation_file",
        list(files),
        format_func=lambda k: f"{files[k].identity.get('title', '?')} · {k}",
    )
    corr = files[chosen]
    counts = corr.counts()
    m1, m2, m3 = st.columns(3)
    m1.metric("Relabelled", counts["relabel"])
    m2.metric("Excluded", counts["exclude"])
    m3.metric("Confirmed", counts["confirm"])
    st.caption(
        f'File `{plain(corr.path)}`. Train with it: tick "Train with this dataset\'s label corrections" on the Train '
        f"page, or `python -m histo_core train --dataset ... --corrections {plain(corr.path)}`. Only training labels "
        "change; validation and test labels never do."
    )

    show_table(marks_table(corr), widths=MARK_COLUMNS, headers=MARK_HEADERS)
    st.download_button(
        "Download the corrections (CSV)",
        corr.to_csv(),
        file_name=f"{chosen}.csv",
        mime="text/csv",
        key="curation_csv",
        help="every mark with its split, row and the run it was marked on",
    )

    undo = st.multiselect("Marks to undo", list(corr.marks), key="curation_undo")
    if st.button("Undo the selected marks", disabled=not undo, key="curation_undo_button"):
        with user_errors():
            left = remove_marks(corr.path, undo)
            st.session_state.pop("curation_undo", None)
            st.success(f"Undone {len(undo)} mark(s); {len(left.marks)} left.")
            st.rerun()

    used = [r for r in listed_runs() if (r.config() or {}).get("corrections") == str(corr.path)]
    st.subheader("Runs trained with these corrections")
    if used:
        for r in used:
            applied = (r.results() or {}).get("corrections") or {}
            st.text(
                f"{r.id}: {r.status().state}"
                + (
                    f" · {applied['relabelled']} relabelled, {applied['excluded']} excluded (marks {applied['digest']})"
                    if applied
                    else ""
                )
            )
    else:
        st.caption("None yet.")


if __name__ == "__main__":  # Streamlit runs a page as __main__; importing it (the warm-up) runs nothing
    main()
