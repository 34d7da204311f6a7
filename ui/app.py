"""The Gradio app: the chat page (its sidebar, settings, feedback gestures) and the other tabs, laid out and wired to
the services app.py built. `build_ui(services)` returns the Blocks; `launch_kwargs` the arguments to launch it.
The chat's logic is ui/chat.py; this file only lays out and connects."""
from __future__ import annotations

import logging
import threading
from pathlib import Path

import gradio as gr

from adapters import ab
from agent.chat import RAG_MODES
from agent.engine import describe
from agent.ingest_jobs import IngestJobs
from agent.settings import Settings
from ui.adapters import build_adapters_tab
from ui.authz import Authz
from ui.chat import (ChatLogic, can_continue, cut_off_notice, feedback_values, is_sources_note, new_state, pick_texts,
                     to_chatbot)
from ui.options import chat_options, conversation_options, max_tokens_limit, temperature_limit
from ui.docs import build_docs_tab
from ui.feedback import build_feedback_tab
from ui.lab import build_lab_tab
from ui.public import build_public_header

log = logging.getLogger("kaizen.app")
REASONS = ["wrong", "unhelpful", "unsafe", "too long", "ignored the sources", "other"]
# Phone-sized screens: the chat fills the screen height so the message box is on screen at load, and the
# settings row and table headers stay readable (the Chatbot's own height is for desktops).
CSS = (Path(__file__).parent / "app.css").read_text(encoding="utf-8")  # the page's own rules, commented there
# The history sidebar and the chat settings start open on a desktop and closed on a phone, where they would push
# the message box off the screen. A desktop window narrowed past 768 px closes them too, and widened again reopens
# the ones it closed; only crossing the line acts, so a panel a phone user opens is never shut by the keyboard.
CLOSE_PANELS_ON_PHONES = """() => {
  const bar = () => document.querySelector('#history-sidebar');
  const opts = () => document.querySelector('#chat-settings');
  const barOpen = () => bar()?.classList.contains('open');
  const optsOpen = () => !!opts()?.querySelector('.label-wrap.open');
  let closed = [];
  const close = () => {
    closed = [];
    if (barOpen()) { bar().querySelector('.toggle-button')?.click(); closed.push('bar'); }
    if (optsOpen()) { opts().querySelector('.label-wrap')?.click(); closed.push('opts'); } };
  const reopen = () => {
    if (closed.includes('bar') && bar() && !barOpen()) bar().querySelector('.toggle-button')?.click();
    if (closed.includes('opts') && opts() && !optsOpen()) opts().querySelector('.label-wrap')?.click();
    closed = []; };
  let wide = window.innerWidth >= 768;
  if (!wide) close();
  window.addEventListener('resize', () => {
    const now = window.innerWidth >= 768;
    if (wide && !now) close(); else if (!wide && now) reopen();
    wide = now; }); }"""

# After a retry the "Which answer is better?" row appears under the message box: below the fold on a phone, so it
# is scrolled into view (only when it is shown and not already on screen).
SHOW_PICK_ROW = """() => { setTimeout(() => { const r = document.querySelector('#pick-row');
  if (!r || r.offsetParent === null) return; const b = r.getBoundingClientRect();
  if (b.top > window.innerHeight - 60 || b.bottom < 0) r.scrollIntoView({behavior: 'smooth', block: 'start'});
}, 300); }"""


def chat_view(st: dict):
    """The Chatbot's messages and its thumbs, both from the session state. Every update sends both: the browser
    keeps the `feedback_value` of the last update that set one, so an answer that replaces another at the same
    position (a retry, an undo and a new question, an edited question) would show the thumb of the answer it
    replaced, and a click meant as a 👍 would take that stale one back."""
    return gr.update(value=to_chatbot(st), feedback_value=feedback_values(st))


class StopFlags:
    """The Stop button's flags: one per browser session, for its running generation. A flag is dropped when its
    generation ends, so none pile up; Stop in one session never reaches another's answer."""

    def __init__(self):
        self._flags: dict[str, threading.Event] = {}

    def run(self, request: gr.Request, generation):
        """Iterate `generation(stop_event)` with this session's flag set up, and dropped at the end."""
        key, ev = request.session_hash or "default", threading.Event()
        self._flags[key] = ev
        try:
            yield from generation(ev)
        finally:
            if self._flags.get(key) is ev:
                del self._flags[key]

    def stop(self, request: gr.Request) -> None:
        ev = self._flags.get(request.session_hash or "default")
        if ev is not None:
            ev.set()

    def __len__(self) -> int:
        return len(self._flags)


def build_ui(services) -> gr.Blocks:
    """The Blocks of the app over `services` (app.Services: settings, store, answerer, registry, scheduler,
    watcher, ab_state)."""
    settings, store, answerer = services.settings, services.store, services.answerer
    registry, scheduler, watcher, ab_state = services.registry, services.scheduler, services.watcher, services.ab_state
    model = answerer.model
    authz = Authz.from_settings(settings)  # the one check for admin-only handlers (ui/authz.py)
    stops = StopFlags()
    logic = ChatLogic(answerer, store, router=lambda conv, asked: ab.route(ab_state.get("experiment"), conv, asked))

    def uid(request: gr.Request) -> int:  # the local user, the logged-in user, or the public Space's visitor
        return authz.store_user(store, request)

    def adapter_choices() -> list[str]:
        return ["active", "base"] + sorted(model.adapters)

    def adapter_arg(choice: str):
        return "default" if choice in (None, "", "active") else (None if choice == "base" else choice)

    with gr.Blocks(title="Kaizen Chat", analytics_enabled=False) as demo:
        gr.Markdown("## Kaizen Chat\nA chat that learns from your feedback: thumbs up or down, corrections, "
                    f"and picks between retries. <small>Answering: {describe(model)}</small>")
        build_public_header(settings)  # public Space mode: Sign in with HF, the not-persistent notice
        state = gr.State(new_state())
        # The open conversation's id, kept in the browser (localStorage, encrypted) so a reload or a theme switch
        # reopens it; the id is only a hint: the store checks that it is the caller's before anything is read.
        open_conv = gr.BrowserState("", storage_key="kaizen-open-conversation")
        with gr.Sidebar(label="Conversations", open=True, elem_id="history-sidebar"):
            history = gr.Radio([], label="Your conversations", elem_id="history", show_label=True)
            with gr.Row():
                rename_box = gr.Textbox(placeholder="A new title", show_label=False, max_lines=1, scale=3,
                                        elem_id="history-title")
                rename_btn = gr.Button("Rename", size="sm", scale=1, elem_id="history-rename")
            delete_btn = gr.Button("Delete from the list", size="sm", variant="stop", elem_id="history-delete")
        with gr.Tab("Chat"):
            with gr.Accordion("Settings: template, documents, adapter, temperature, length", open=True,
                              elem_id="chat-settings"):
                with gr.Row():
                    template = gr.Dropdown(sorted(answerer.templates()), value=settings.template, label="Template",
                                           elem_id="template", scale=2)
                    rag = gr.Radio(list(RAG_MODES), value="auto", label="Use documents", elem_id="rag", scale=2)
                    adapter = gr.Dropdown(adapter_choices(), value="active", label="Adapter", elem_id="adapter",
                                          scale=1)
                with gr.Row():  # this chat's own decoding; checked again on the server (ui/chat.py chat_options)
                    # the bounds always hold the server's own defaults (KAIZEN_MAX_NEW_TOKENS may be 12)
                    temperature = gr.Slider(0, temperature_limit(settings), value=settings.temperature, step=0.05,
                                            label="Temperature (0: the same answer every time)",
                                            elem_id="temperature")
                    max_tokens = gr.Slider(1, max_tokens_limit(settings), value=settings.max_new_tokens, step=1,
                                           label="Max tokens of an answer", elem_id="max-tokens")
            chatbot = gr.Chatbot(elem_id="chatbot", label="Chat", show_label=False, editable="all",
                                 feedback_options=("Like", "Dislike"),
                                 sanitize_html=True, height=480, buttons=["copy"],
                                 placeholder="Ask anything. Edit an answer (✎) to correct it, "
                                             "or Retry (↻) for another one.")
            with gr.Row(elem_id="composer"):
                box = gr.Textbox(placeholder="Type a message and press Enter", show_label=False, scale=6,
                                 elem_id="message", max_lines=8)
                send = gr.Button("Send", variant="primary", scale=1, elem_id="send")
                stop = gr.Button("Stop", scale=1, elem_id="stop")
                new = gr.Button("New chat", scale=1, elem_id="new-chat")
                api_chat = gr.Button(visible=False)  # the /chat API's trigger (below)
            cont = gr.Button("Continue", visible=False, elem_id="continue", size="sm")
            with gr.Group(visible=False, elem_id="pick-row") as pick_row:  # only with two different answers
                gr.Markdown("Which answer is better?")
                with gr.Row():
                    with gr.Column():
                        pick_first_text = gr.Markdown(elem_id="pick-first-text")
                        pick_first = gr.Button("The earlier answer", elem_id="pick-first")
                    with gr.Column():
                        pick_second_text = gr.Markdown(elem_id="pick-second-text")
                        pick_second = gr.Button("The new answer", elem_id="pick-second")
            with gr.Group(visible=False, elem_id="why-panel") as why_panel:
                why_index = gr.Number(visible=False, precision=0)
                reasons = gr.CheckboxGroup(REASONS, label="What was wrong?", elem_id="reasons")
                comment = gr.Textbox(label="Comment (optional)", max_lines=4, elem_id="comment")
                with gr.Row():
                    why_save = gr.Button("Save feedback", variant="primary", elem_id="why-save", scale=2)
                    # the 👎 itself is already stored: closing only skips the reasons (on a phone the panel is a
                    # sheet over the message box)
                    why_close = gr.Button("Close", elem_id="why-close", scale=1)
            status = gr.Markdown("", elem_id="status")
            with gr.Accordion("Answer details", open=False, elem_id="answer-details-box"):
                details = gr.Markdown("No answer yet.", elem_id="answer-details")

        # -- chat handlers --------------------------------------------------------------------------------
        def view(st, error: str = "") -> list:
            """[pick row, first answer, new answer, Continue] and the status line, for the state."""
            first, second = pick_texts(st)
            status_text = f"⚠️ {error}" if error else (st.get("notice") or cut_off_notice(st))
            return [gr.update(visible=bool(first)), first, second, gr.update(visible=can_continue(st)), status_text]

        def answer(message, st, tmpl, rag_mode, adapter_choice, temp, length, request, typed_ahead: bool):
            """Stream the answer to `message` as (state, chatbot, box, status). With `typed_ahead` (the browser)
            only the first frame empties the box, so what the person types while the answer streams stays there
            for their next question; without it (the /chat API) every frame returns the box empty, as before."""
            shown = False  # has a frame (and so the question) reached the screen?
            chat = chat_view if typed_ahead else to_chatbot  # the API returns the messages alone, as before
            try:
                options = chat_options(settings, temp, length)
                for st in stops.run(request, lambda ev: logic.respond(st, uid(request), message, tmpl, rag_mode,
                                                                      adapter_arg(adapter_choice), ev, options)):
                    yield st, chat(st), gr.skip() if shown and typed_ahead else "", view(st)[-1]
                    shown = True
            except (ValueError, KeyError) as e:  # refused before any frame: the message goes back into the box
                gr.Warning(str(e))
                yield st, chat(st), gr.skip() if shown and typed_ahead else message, f"⚠️ {e}"

        def on_send(message, st, tmpl, rag_mode, adapter_choice, temp=None, length=None, request: gr.Request = None):
            yield from answer(message, st, tmpl, rag_mode, adapter_choice, temp, length, request, typed_ahead=False)

        def on_send_typed_ahead(message, st, tmpl, rag_mode, adapter_choice, temp=None, length=None,
                                request: gr.Request = None):
            yield from answer(message, st, tmpl, rag_mode, adapter_choice, temp, length, request, typed_ahead=True)

        def on_view(st):  # after an answer: the pick row and Continue as the state says
            return view(st)[:-1]

        def on_details(st, request: gr.Request):  # the "Answer details" of the latest answer, from the store
            try:
                return logic.details(st, uid(request))
            except (LookupError, ValueError, PermissionError) as e:
                return f"⚠️ {e}"

        def on_retry(st, tmpl, rag_mode, adapter_choice, temp, length, data: gr.RetryData, request: gr.Request):
            try:
                options = chat_options(settings, temp, length)
                for st in stops.run(request, lambda ev: logic.retry(st, uid(request), data.index, tmpl, rag_mode,
                                                                    adapter_arg(adapter_choice), ev, options)):
                    yield [st, chat_view(st)] + view(st)
            except (ValueError, KeyError) as e:
                gr.Warning(str(e))
                yield [st, chat_view(st)] + view(st, str(e))

        def on_continue(st, tmpl, rag_mode, adapter_choice, temp, length, request: gr.Request):
            try:
                options = chat_options(settings, temp, length)
                for st in stops.run(request, lambda ev: logic.continue_answer(st, uid(request), tmpl, rag_mode,
                                                                              adapter_arg(adapter_choice), ev,
                                                                              options)):
                    yield [st, chat_view(st)] + view(st)
            except (ValueError, KeyError) as e:
                gr.Warning(str(e))
                yield [st, chat_view(st)] + view(st, str(e))

        def on_stop(request: gr.Request):
            stops.stop(request)

        def on_new():
            return opened(new_state()) + view(new_state())

        # -- the history sidebar: the caller's own conversations (the store checks every id's owner) -----------
        def history_list(user: int, selected=None):
            choices = logic.conversations(user)
            return gr.update(choices=choices, value=selected, label="Your conversations" if choices else
                             "Your conversations (none yet: each chat you start is listed here)")

        def opened(st):  # [state, chatbot, reason panel] showing `st` (a new chat: an empty one, no thumbs)
            return [st, chat_view(st), gr.update(visible=False)]

        def history_open(conv_id, request: gr.Request):
            user = uid(request)
            if conv_id in (None, ""):
                return [gr.skip()] * (4 + len(view_outputs))
            try:
                st = logic.open(user, conv_id)
            except (LookupError, ValueError) as e:  # another user's, deleted or forged id: nothing is read
                gr.Warning(f"cannot open that conversation: {e}")
                return [gr.skip()] * (3 + len(view_outputs)) + [f"⚠️ cannot open that conversation: {e}"]
            return opened(st) + [st["conversation"]] + view(st)

        def history_restore(saved, request: gr.Request):
            """Page load: reopen the conversation the browser had open (if it is still the caller's) and list the
            caller's conversations."""
            user = uid(request)
            st = new_state()
            if saved not in (None, ""):
                try:
                    st = logic.open(user, saved)
                except (LookupError, ValueError):
                    pass  # gone, or not this user's: start fresh
            return opened(st) + [st["conversation"] or "", history_list(user, st["conversation"])] + view(st)

        def history_saved(st, request: gr.Request):  # after an answer: remember the conversation, refresh the list
            return st.get("conversation"), history_list(uid(request), st.get("conversation"))

        def history_rename(conv_id, title, request: gr.Request):
            user = uid(request)
            try:
                if conv_id in (None, ""):
                    raise ValueError("choose a conversation in the list first")
                logic.store.rename_conversation(int(conv_id), user, title)
            except (LookupError, ValueError, TypeError) as e:
                gr.Warning(str(e))
                return gr.update(), gr.update()
            gr.Info("Renamed.")
            return history_list(user, int(conv_id)), ""

        def history_delete(conv_id, st, request: gr.Request):
            user = uid(request)
            try:
                if conv_id in (None, ""):
                    raise ValueError("choose a conversation in the list first")
                logic.store.hide_conversation(int(conv_id), user)
            except (LookupError, ValueError, TypeError) as e:
                gr.Warning(str(e))
                return [gr.skip()] * (5 + len(view_outputs))
            gr.Info("Deleted from your list (the record is kept for training unless you opt out).")
            if st.get("conversation") == int(conv_id):
                return opened(new_state()) + ["", history_list(user)] + view(new_state())
            return [gr.skip()] * 3 + [gr.skip(), history_list(user, st.get("conversation"))] + [
                gr.skip()] * len(view_outputs)

        chat_inputs = [box, state, template, rag, adapter, temperature, max_tokens]
        view_outputs = [pick_row, pick_first_text, pick_second_text, cont, status]
        chat_outputs = [state, chatbot, box, status]  # the public /chat API: (chat, box, status) as before
        def clear_view():  # a new question: no pick, no Continue
            return [gr.update(visible=False), "", "", gr.update(visible=False)]

        for trigger in (box.submit, send.click):
            trigger(clear_view, None, view_outputs[:-1], queue=False, api_visibility="private")
        # Every listener that generates shares one queue, wide enough (16 per decode slot, as the API's bound) that
        # waiting answers wait in the fair gate (agent/fair.py: a free slot goes to the user with the fewest answers
        # running, a newcomer first), not in Gradio's first-come queue; KAIZEN_USER_MAX_GENERATIONS bounds each user.
        gen_queue = dict(concurrency_id="generate", concurrency_limit=16 * answerer.gate.capacity)
        demo.kaizen_max_threads = 40 + 16 * answerer.gate.capacity  # a waiting answer holds a worker thread
        # The public /chat API (gradio_client, scripts) has its own listener on a button no one sees, so the
        # browser's Enter and Send can leave alone what is typed during an answer without changing its outputs.
        api_chat.click(on_send, chat_inputs, chat_outputs, api_name="chat", **gen_queue)
        for trigger in (box.submit, send.click):
            trigger(on_send_typed_ahead, chat_inputs, chat_outputs, api_visibility="private", **gen_queue).then(
                on_view, [state], view_outputs[:-1], api_visibility="private").then(
                history_saved, [state], [open_conv, history], api_visibility="private").then(
                on_details, [state], [details], api_visibility="private")
        stop.click(on_stop, None, None, api_visibility="private", queue=False)
        new_outputs = [state, chatbot, why_panel] + view_outputs
        def history_cleared():  # a new chat: nothing open, nothing selected in the list
            return "", gr.update(value=None)

        new.click(on_new, None, new_outputs, api_visibility="private").then(
            history_cleared, None, [open_conv, history], api_visibility="private").then(
            on_details, [state], [details], api_visibility="private")
        chatbot.clear(on_new, None, new_outputs, api_visibility="private").then(
            history_cleared, None, [open_conv, history], api_visibility="private")
        def on_reopened(st):  # a reopened conversation brings back its own temperature and length
            if not st.get("conversation"):
                return gr.skip(), gr.skip()
            return conversation_options(st["shown"], settings)

        history.input(history_open, [history], [state, chatbot, why_panel, open_conv] + view_outputs,
                      api_visibility="private").then(on_details, [state], [details], api_visibility="private").then(
            on_reopened, [state], [temperature, max_tokens], api_visibility="private")
        rename_btn.click(history_rename, [history, rename_box], [history, rename_box], api_visibility="private")
        delete_btn.click(history_delete, [history, state], [state, chatbot, why_panel, open_conv, history] + view_outputs,
                         api_visibility="private")
        demo.load(None, None, None, js=CLOSE_PANELS_ON_PHONES)
        demo.load(history_restore, [open_conv], [state, chatbot, why_panel, open_conv, history] + view_outputs,
                  api_visibility="private").then(on_details, [state], [details], api_visibility="private").then(
            on_reopened, [state], [temperature, max_tokens], api_visibility="private")
        answer_inputs = [state, template, rag, adapter, temperature, max_tokens]
        chatbot.retry(on_retry, answer_inputs, [state, chatbot] + view_outputs,
                      api_visibility="private", **gen_queue).then(
            on_details, [state], [details], api_visibility="private").then(None, None, None, js=SHOW_PICK_ROW)
        cont.click(on_continue, answer_inputs, [state, chatbot] + view_outputs,
                   api_visibility="private", **gen_queue).then(on_details, [state], [details], api_visibility="private")

        # -- feedback handlers ------------------------------------------------------------------------------
        def on_like(st, data: gr.LikeData, request: gr.Request):
            try:
                msg = logic.rate(st, uid(request), data.index, data.liked)
            except (ValueError, LookupError, PermissionError) as e:
                gr.Warning(str(e))
                return gr.update(), None, f"⚠️ {e}"
            gr.Info(msg)
            idx = data.index[0] if isinstance(data.index, (list, tuple)) else data.index
            # the reason panel belongs to a 👎: it closes when the thumb is taken back or turned into a 👍
            return gr.update(visible=data.liked is False), idx, msg

        def on_why(st, index, why, note, request: gr.Request):
            try:
                msg = logic.rate(st, uid(request), int(index), False, why or [], note or "")
            except (ValueError, LookupError, PermissionError, TypeError) as e:
                gr.Warning(str(e))
                return gr.update(), gr.update(), gr.update(), f"⚠️ {e}"
            gr.Info(msg)
            return gr.update(visible=False), [], "", msg

        def on_edit(st, tmpl, rag_mode, adapter_choice, temp, length, data: gr.EditData, request: gr.Request):
            if is_sources_note(st, data.index):  # shown in the answer's bubble, never edited: nothing to do
                yield [gr.update() for _ in range(2 + len(view_outputs))]
                return
            try:
                if logic.is_question(st, data.index):  # an edited question is asked again (a new branch)
                    options = chat_options(settings, temp, length)
                    for st in stops.run(request, lambda ev: logic.reask(st, uid(request), data.index, data.value,
                                                                        tmpl, rag_mode, adapter_arg(adapter_choice),
                                                                        ev, options)):
                        yield [st, chat_view(st)] + view(st)
                    return
                msg = logic.edit(st, uid(request), data.index, data.value)
                gr.Info(msg)
            except (ValueError, LookupError, PermissionError, KeyError) as e:
                gr.Warning(str(e))
                yield [st, chat_view(st)] + view(st, str(e))
                return
            yield [st, chat_view(st)] + view(st)[:-1] + [msg]

        def on_pick(which):
            def handler(st, request: gr.Request):
                try:
                    msg = logic.pick(st, uid(request), which)
                    gr.Info(msg)
                except (ValueError, LookupError, PermissionError) as e:
                    gr.Warning(str(e))
                    return [st, chat_view(st)] + view(st, str(e))
                return [st, chat_view(st)] + view(st)[:-1] + [msg]
            return handler

        def on_undo(st, data: gr.UndoData, request: gr.Request):
            try:
                text = logic.undo(st, uid(request), data.index)
            except (ValueError, LookupError, PermissionError) as e:
                gr.Warning(str(e))
                return [st, chat_view(st), gr.update()] + view(st, str(e))
            return [st, chat_view(st), text] + view(st)[:-1] + [
                "Removed the last turn from the chat (the record is kept)."]

        chatbot.like(on_like, [state], [why_panel, why_index, status], api_visibility="private")
        why_save.click(on_why, [state, why_index, reasons, comment], [why_panel, reasons, comment, status],
                       api_visibility="private")
        def on_why_close():  # the 👎 stays stored; only the reasons are skipped
            return gr.update(visible=False), [], ""

        why_close.click(on_why_close, None, [why_panel, reasons, comment], queue=False,
                        api_visibility="private")
        chatbot.edit(on_edit, answer_inputs, [state, chatbot] + view_outputs,
                     api_visibility="private", **gen_queue).then(on_details, [state], [details], api_visibility="private")
        for button, which in ((pick_first, "first"), (pick_second, "second")):
            button.click(on_pick(which), [state], [state, chatbot] + view_outputs, api_visibility="private").then(
                on_details, [state], [details], api_visibility="private")
        chatbot.undo(on_undo, [state], [state, chatbot, box] + view_outputs, api_visibility="private")

        # -- other tabs -------------------------------------------------------------------------------------
        if answerer.kb is not None:
            with gr.Tab("Documents"):
                # an upload's embedding yields the CPU to the answers (agent/priority.py)
                build_docs_tab(answerer.kb, authz=authz, jobs=IngestJobs(niceness=settings.background_nice))
        with gr.Tab("Feedback"):
            build_feedback_tab(store, lambda request=None: uid(request))
        # Gradio 6 cannot hide a shown tab (an update to visible=False leaves its button there), so with logins
        # the admin tabs start hidden and the page load shows them to admins; in single-user mode all are admins.
        admins_only = authz.login_mode
        with gr.Tab("Adapters", visible=not admins_only) as adapters_tab:
            adapter_parts = build_adapters_tab(registry, scheduler, watcher.sync_now, authz=authz,
                                               timer_active=False)
        with gr.Tab("Lab", visible=not admins_only) as lab_tab:
            build_lab_tab(settings, authz=authz)
        admin_tabs = [adapters_tab, lab_tab]
        adapters_shown = gr.State(None)  # per session: the chat's Adapter choices last sent
        adapters_timer = gr.Timer(10)  # a version attached meanwhile (promoted, A/B, another process) is listed

        def on_adapters_tick(shown):
            now = adapter_choices()
            return (gr.skip(), shown) if now == shown else (gr.update(choices=now), now)

        adapters_timer.tick(on_adapters_tick, [adapters_shown], [adapter, adapters_shown], queue=False,
                            show_progress="hidden", api_visibility="private")

        def on_load(request: gr.Request):
            """Training controls are shown to admins (everyone is, in anonymous single-user mode); their handlers
            check the role themselves (ui/authz.py), so hiding them is only for the eye."""
            uid(request)
            admin = authz.is_admin(request)
            return ([gr.update(choices=adapter_choices()), adapter_choices()]
                    + [gr.update(visible=admin) for _ in admin_tabs] + [gr.update(active=admin)])

        demo.load(on_load, None, [adapter, adapters_shown, *admin_tabs, adapter_parts["timer"]],
                  api_visibility="private")
    demo.queue(default_concurrency_limit=1)  # one generation at a time per event; the model lock backs it up
    return demo


def launch_kwargs(settings: Settings, demo: gr.Blocks | None = None) -> dict:
    """`demo.launch(...)` arguments; with `demo` (from build_app) its /v1 API routes join Gradio's FastAPI app."""
    kw = dict(server_name=settings.host, server_port=settings.port, share=False, ssr_mode=False,
              max_file_size=f"{settings.max_upload_mb}mb", show_error=False, quiet=False, css=CSS,
              max_threads=getattr(demo, "kaizen_max_threads", 40))
    from web.guard import guard_app_kwargs

    kw["app_kwargs"] = guard_app_kwargs(settings)  # sessions bound to users, login rate limit, body cap, headers
    api = getattr(demo, "kaizen_api", None)
    if api is not None:  # /v1/chat/completions, /v1/models, /v1/feedback beside the UI, same port (web/routes.py)
        from web.routes import build_router

        kw["app_kwargs"]["routes"] = build_router(api).routes
    if settings.auth_file:
        from feedback.auth import auth_fn

        kw["auth"] = auth_fn(settings.auth_file)
    return kw
