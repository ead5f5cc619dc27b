"""Train: choose a dataset and every training option, check them, estimate the time, find a learning rate,
and start a background run (it keeps going if the browser closes; watch it on the Runs page)."""

from __future__ import annotations

import streamlit as st

from histo_core import jobs, liveness
from histo_core.errors import HistoError
from histo_core.launch import start_once
from histo_core.metrics import small_split_warnings
from pages.ui.common import lazy_expander, page_setup, plain, signed_in_user, synthetic_badge, user_errors
from pages.ui.curation import corrections_choice
from pages.ui.datasets import dataset_picker, open_cached
from pages.ui.runs import fmt_duration, link_to_page
from pages.ui.study_panel import KEPT as STUDY_WIDGETS
from pages.ui.study_panel import study_panel
from pages.ui.tasks import task_panel
from pages.ui.train_form import PREFIX, apply_defaults, config_from_state, form_message, render_fields, section_key


def pick_dataset() -> tuple[str | None, int | None, bool]:
    """(spec, size or None for native, as_rgb) from the shared picker; `?dataset=<spec>` preselects one."""
    choice = dataset_picker("train_ds", url="sync")
    return (choice.spec, choice.size, choice.as_rgb) if choice else (None, None, False)


def refresh_defaults(spec: str, size: int | None, as_rgb: bool) -> TrainConfig:  # noqa: F821
    """Defaults for this dataset and device, pushed into the widgets when either changed."""
    from histo_core.training import default_config

    device = st.session_state.get(PREFIX + "device", "auto")
    try:
        defaults = default_config(spec, device)
    except HistoError as exc:  # e.g. device cuda without a GPU: show it, keep going with auto's defaults
        st.error(plain(exc))
        defaults = default_config(spec, "auto").replace(device=device)
    if st.session_state.get(PREFIX + "defaults_for") != (spec, device):
        apply_defaults(defaults)
        st.session_state[PREFIX + "defaults_for"] = (spec, device)
        st.session_state.pop(PREFIX + "estimate", None)
        st.session_state.pop(PREFIX + "lr_find", None)
    return defaults.replace(dataset=spec, size=size, as_rgb=as_rgb)


def describe_dataset(spec: str, size: int | None, as_rgb: bool):
    """Title, classes and split sizes of the chosen dataset; None (with st.error) when it cannot be opened."""
    with user_errors():
        ds = open_cached(spec, size, as_rgb)
        info = ds.info
        sizes = ds.split_sizes()
        st.caption(
            f"**{plain(info.title)}** · {info.num_classes} classes · {info.size} px · {info.channels} channel(s) · "
            + " / ".join(f"{k} {v:,}" for k, v in sizes.items())
        )
        synthetic_badge(info)
        for warning in small_split_warnings(sizes):
            st.warning(plain(warning), icon="⚠️")
        return ds
    return None


def estimate_panel(config) -> None:
    def show(est: dict) -> None:
        st.info(
            f"About {fmt_duration(est['total_s'])} for {est['epochs']} epochs: "
            f"{fmt_duration(est['per_epoch_s'])} per epoch of {est['train_tiles']:,} tiles "
            f"({est['train_images_per_s']:,.0f} images/s after {est['warmup_batches']} warm-up batches"
            + (f", validation of {est['val_tiles']:,} tiles included" if est["val_tiles"] else "")
            + (f", {fmt_duration(est['checkpoint_s'])} of checkpoint writes" if est.get("checkpoint_s") else "")
            + f") plus {fmt_duration(est['fixed_s'])} once (start, loading the data, final test, feature map)."
        )

    task_panel(
        "estimate",
        {"config": config.to_dict()},
        start_label="Estimate the training time",
        key=PREFIX + "est",
        help="times training batches of this model on this device after warm-up, one validation pass and "
        "the start-up costs, in a background process",
        render_result=show,
        device=config.device,
    )


def _use_suggested_lr(lr: float) -> None:
    st.session_state[PREFIX + "lr"] = float(lr)


def lr_finder_panel(config) -> None:
    from pages.ui.charts import lr_find_figure

    def show(result: dict) -> None:
        st.plotly_chart(lr_find_figure(result["lrs"], result["losses"], result.get("suggested_lr")), width="stretch")
        if result.get("suggested_lr"):
            st.button(
                f"Use the suggested rate {result['suggested_lr']:.2g}",
                on_click=_use_suggested_lr,
                args=(result["suggested_lr"],),
            )
        else:
            st.warning("No clear rate: the loss never fell steadily. Keep the default or try a smaller batch.")

    task_panel(
        "lr-find",
        {"config": config.to_dict(), "steps": 100},
        start_label="Run the LR finder",
        key=PREFIX + "lrf",
        render_result=show,
        device=config.device,
        help="trains briefly while raising the learning rate from 1e-6 to 1 in a background process; the "
        "model is then discarded",
    )


def start_training(config) -> None:
    """Submit `config` once: a second click with the same settings while that run is still queued or running
    (a double click sends two clicks) names the run already started instead of starting an identical one."""
    from histo_core import paths
    from histo_core.runs import RunDir

    def already_started() -> str | None:
        previous = st.session_state.get(PREFIX + "last_submitted")
        if previous and previous[0] == config.to_dict():
            run_dir = paths.runs_dir() / previous[1]
            if run_dir.is_dir() and liveness.refresh_status(RunDir(run_dir)).state in liveness.ACTIVE_STATES:
                return previous[1]
        return None

    def start() -> str:
        settings = config.to_dict()
        run = jobs.submit(config, started_by=signed_in_user())
        st.session_state[PREFIX + "last_submitted"] = (settings, run.id)
        st.session_state[PREFIX + "last_run"] = run.id
        return run.id

    with user_errors("Not started: "):
        run_id, started = start_once(already_started, start)
        if not started:
            st.info(
                f"Run `{run_id}` with these settings is already started; change a setting (the seed, "
                "for another repeat) to start another."
            )


def main() -> None:
    page_setup(__file__)
    spec, size, as_rgb = pick_dataset()
    if not spec:
        st.info("Choose a dataset, or type the path of your own files.")
        return
    base = refresh_defaults(spec, size, as_rgb)
    ds = describe_dataset(spec, size, as_rgb)
    base = corrections_choice(base, ds)

    render_fields()
    config, problem = None, None
    try:
        config = config_from_state(base)
        config.validate()
    except HistoError as exc:
        problem = str(exc)
    if problem:
        st.error(plain(form_message(problem)))

    if config is not None and ds is not None and not problem:
        left, right = st.columns(2)
        with left:
            estimate_panel(config)
        with right:
            opened, box = lazy_expander("Learning-rate finder", section_key("lr_find"))
            if opened:
                with box:
                    lr_finder_panel(config)

    st.divider()

    if st.button("Start training", type="primary", disabled=bool(problem) or ds is None or config is None):
        start_training(config)
    if config is not None and ds is not None and not problem:
        title = "Run as a noise study (noise levels x methods x seeds)"
        opened, box = lazy_expander(title, section_key("study"), keep=STUDY_WIDGETS)
        if opened:
            with box:
                study_panel(config)
    last_run = st.session_state.get(PREFIX + "last_run")
    if last_run:
        st.success(
            f"Started run `{last_run}` in the background: it continues if you close this tab. "
            "It waits in the queue while another run uses the device."
        )
        link_to_page("pages/3_Runs.py", "Watch it on the Runs page", "📈", query_params={"run": last_run})


if __name__ == "__main__":  # Streamlit runs a page as __main__; importing it (the warm-up) runs nothing
    main()
