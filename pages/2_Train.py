"""Train: choose a dataset and every training option, check them, estimate the time, find a learning rate,
and start a background run (it keeps going if the browser closes; watch it on the Runs page)."""

from __future__ import annotations

import math

import streamlit as st

from histo_core import jobs
from histo_core.errors import HistoError
from pages.ui.common import page_setup, synthetic_badge, user_errors
from pages.ui.datasets import dataset_picker, open_cached
from pages.ui.runs import fmt_duration, link_to_page
from pages.ui.train_form import PREFIX, apply_defaults, config_from_state, form_message, render_fields

page_setup("Train", "🏋️")


def pick_dataset() -> tuple[str | None, int | None, bool]:
    """(spec, size or None for native, as_rgb) from the shared picker; `?dataset=<spec>` preselects one."""
    choice = dataset_picker("train_ds", default=st.query_params.get("dataset"))
    return (choice.spec, choice.size, choice.as_rgb) if choice else (None, None, False)


def refresh_defaults(spec: str, size: int | None, as_rgb: bool) -> "TrainConfig":  # noqa: F821
    """Defaults for this dataset and device, pushed into the widgets when either changed."""
    from histo_core.train import default_config

    device = st.session_state.get(PREFIX + "device", "auto")
    try:
        defaults = default_config(spec, device)
    except HistoError as exc:  # e.g. device cuda without a GPU: show it, keep going with auto's defaults
        st.error(str(exc))
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
        st.caption(f"**{info.title}** · {info.num_classes} classes · {info.size} px · {info.channels} channel(s) · "
                   + " / ".join(f"{k} {v:,}" for k, v in sizes.items()))
        synthetic_badge(info)
        return ds
    return None


def train_size(config, ds) -> int:
    sizes = ds.split_sizes()
    n = sizes.get("train", 0) + (sizes.get("val", 0) if config.train_splits == "train+val" else 0)
    return min(n, config.max_train_samples) if config.max_train_samples else n


def estimate_panel(config, ds) -> None:
    from histo_core.train import measure_throughput

    if st.button("Estimate time per epoch", help="times a few training batches of this model on this device"):
        with user_errors(), st.spinner("Timing a few batches…"):
            st.session_state[PREFIX + "estimate"] = (config.to_dict(), measure_throughput(config))
    measured = st.session_state.get(PREFIX + "estimate")
    if measured:
        measured_cfg, images_per_s = measured
        n = train_size(config, ds)
        per_epoch = n / images_per_s if images_per_s else math.nan
        stale = "" if measured_cfg == config.to_dict() else " (measured with other settings; estimate again)"
        st.info(f"≈ {images_per_s:,.0f} training images/s → about {fmt_duration(per_epoch)} per epoch of "
                f"{n:,} tiles, {fmt_duration(per_epoch * config.epochs)} for {config.epochs} epochs "
                f"(plus validation){stale}")


def _use_suggested_lr() -> None:
    result = st.session_state.get(PREFIX + "lr_find") or {}
    if result.get("suggested_lr"):
        st.session_state[PREFIX + "lr"] = float(result["suggested_lr"])


def lr_finder_panel(config) -> None:
    from histo_core.lr_find import lr_find
    from pages.ui.charts import lr_find_figure

    if st.button("Run the LR finder", help="trains briefly while raising the learning rate from 1e-6 to 1; "
                                           "the model is then discarded"):
        bar = st.progress(0.0, text="LR finder…")
        steps = 100

        def on_step(step: int, lr: float, loss: float) -> None:
            bar.progress(min(1.0, (step + 1) / steps), text=f"LR finder: lr {lr:.2g}, loss {loss:.3f}")

        with user_errors():
            st.session_state[PREFIX + "lr_find"] = lr_find(config, num_steps=steps, on_step=on_step)
        bar.empty()
    result = st.session_state.get(PREFIX + "lr_find")
    if result:
        st.plotly_chart(lr_find_figure(result["lrs"], result["losses"], result.get("suggested_lr")),
                        width="stretch")
        if result.get("suggested_lr"):
            st.button(f"Use the suggested rate {result['suggested_lr']:.2g}", on_click=_use_suggested_lr)
        else:
            st.warning("No clear rate: the loss never fell steadily. Keep the default or try a smaller batch.")


# -- page ----------------------------------------------------------------------------------------------
spec, size, as_rgb = pick_dataset()
if not spec:
    st.info("Choose a dataset, or type the path of your own files.")
    st.stop()
base = refresh_defaults(spec, size, as_rgb)
ds = describe_dataset(spec, size, as_rgb)

render_fields()
config, problem = None, None
try:
    config = config_from_state(base)
    config.validate()
except HistoError as exc:
    problem = str(exc)
if problem:
    st.error(form_message(problem))

if config is not None and ds is not None and not problem:
    left, right = st.columns(2)
    with left:
        estimate_panel(config, ds)
    with right:
        with st.expander("Learning-rate finder"):
            lr_finder_panel(config)

st.divider()


def start_training(config) -> None:
    """Submit `config` once: a second click with the same settings while that run is still queued or running
    (a double click sends two clicks) names the run already started instead of starting an identical one."""
    from histo_core.runs import RunDir
    from histo_core import paths

    previous = st.session_state.get(PREFIX + "last_submitted")
    if previous and previous[0] == config.to_dict():
        run_dir = paths.runs_dir() / previous[1]
        if run_dir.is_dir() and jobs.refresh_status(RunDir(run_dir)).state in jobs.ACTIVE_STATES:
            st.info(f"Run `{previous[1]}` with these settings is already started; change a setting (the seed, "
                    "for another repeat) to start another.")
            return
    with user_errors("Not started: "):
        run = jobs.submit(config)
        st.session_state[PREFIX + "last_submitted"] = (config.to_dict(), run.id)
        st.session_state[PREFIX + "last_run"] = run.id


if st.button("Start training", type="primary", disabled=bool(problem) or ds is None or config is None):
    start_training(config)
last_run = st.session_state.get(PREFIX + "last_run")
if last_run:
    st.success(f"Started run `{last_run}` in the background: it continues if you close this tab. "
               "It waits in the queue while another run uses the device.")
    link_to_page("pages/3_Runs.py", "Watch it on the Runs page", "📈", query_params={"run": last_run})
