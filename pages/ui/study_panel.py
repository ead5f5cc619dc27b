"""The Train page's study panel: the form's settings started as a noise study (histo_core.study), with the options
of `python -m histo_core study`: noise levels x methods x seeds, a label-error search on the noisy runs
(--find-errors) and every cell as labelled and with the dataset's corrections (--compare-corrections)."""

from __future__ import annotations

import streamlit as st

from histo_core import liveness
from histo_core.config import NOISE_METHODS, TrainConfig
from histo_core.launch import start_once
from pages.ui.common import WRAP, signed_in_user, user_errors
from pages.ui.formats import plural
from pages.ui.runs import fmt_duration, link_to_page

KEY = "train.study."  # every widget of the panel, under the Train form's prefix
KEPT = tuple(KEY + name for name in ("noises", "methods", "seeds", "find_errors", "compare_corrections"))  # not "start"


def study_panel(config: TrainConfig) -> None:
    """Start `config` as a noise study, with the number of runs and, once the time of one run is estimated on
    the page, the total."""
    from histo_core import study as S
    from histo_core.task_folders import latest_task, refresh_task

    c1, c2, c3 = st.columns(3)
    noises = c1.multiselect(
        "Noise levels", [0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6], default=[0.0, 0.2, 0.4], key=KEY + "noises"
    )
    methods = c2.multiselect("Methods", list(NOISE_METHODS), default=list(NOISE_METHODS), key=KEY + "methods")
    seeds = int(c3.number_input("Seeds", min_value=1, max_value=20, value=3, key=KEY + "seeds"))
    o1, o2 = st.columns(2)
    find_errors = o1.checkbox(
        "Measure the label-error search",
        key=KEY + "find_errors",
        help="search the label errors of each noisy run of the first method and score the search against the "
        "labels the noise flipped: precision, recall and average precision per noise level (Studies page)",
        **WRAP,
    )
    compare = o2.checkbox(
        "Compare with the label corrections",
        key=KEY + "compare_corrections",
        disabled=not config.corrections,
        help="every run twice: as labelled and with this dataset's label corrections (tick them above)"
        if config.corrections
        else "needs label corrections: mark tiles on the Review page, then tick 'Train with this dataset's label "
        "corrections' above",
        **WRAP,
    )
    compare = bool(compare and config.corrections)
    spec = S.StudySpec(
        archs=[config.arch],
        noises=sorted(noises),
        methods=list(methods),
        noise_mode="fixed",
        seeds=seeds,
        find_errors=bool(find_errors),
        compare_corrections=compare,
    )
    count = spec.size()
    est_task = latest_task("estimate", {"config": config.to_dict()})
    est = est_task.result() if est_task is not None else None
    weights = spec.weights_note(config)
    note = f" ({weights})" if weights else ""
    st.caption(
        f"{plural(count, 'run')} of {config.arch}, fixed symmetric noise, one at a time"
        + (
            f": about {fmt_duration(spec.time_in_runs(config) * est['total_s'])} in all at the estimate of one run "
            f"above{note}"
            if est
            else "; estimate the training time above to see the total"
        )
        + ". The study recommends a method per noise level from the validation split with noisy labels."
    )
    if st.button("Start the study", disabled=count == 0, key=KEY + "start"):
        request = (S.asdict(spec), config.to_dict())

        def already_started() -> str | None:  # a double click: the second click finds the first study
            previous = st.session_state.get(KEY + "submitted")
            if previous and previous[0] == request:
                task = S.study_by_id(previous[1])
                if refresh_task(task).state in liveness.ACTIVE_STATES:
                    return previous[1]
            return None

        def start() -> str:
            task = S.start_study(spec, config, started_by=signed_in_user())
            st.session_state[KEY + "submitted"] = (request, task.id)
            st.session_state[KEY + "last"] = task.id
            return task.id

        with user_errors("Not started: "):
            study_id, started = start_once(already_started, start)
            if not started:
                st.info(f"Study `{study_id}` with these settings is already running.")
    last = st.session_state.get(KEY + "last")
    if last:
        st.success(f"Started study `{last}` in the background.")
        link_to_page("pages/9_Studies.py", "Watch it on the Studies page", "🧪", query_params={"study": last})
