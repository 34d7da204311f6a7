"""The public Space's header: the Sign-in button and the not-persistent notice (web/visitors.py says who is who)."""
from __future__ import annotations

import gradio as gr

from web.visitors import NOT_PERSISTENT, oauth_available


def build_public_header(settings) -> None:
    """In public mode, inside the Blocks: the Sign-in button (when the Space has OAuth) and, when the data dir is
    not on persistent storage, a plain notice that feedback is lost at restart. Nothing outside public mode."""
    if not settings.public:
        return
    with gr.Row():
        if oauth_available():
            gr.LoginButton(elem_id="hf-login", scale=0)
        who = ("Sign in with Hugging Face to keep your chats under your name; otherwise" if oauth_available()
               else "You are an anonymous visitor:")
        gr.Markdown(f"{who} this browser keeps your chats, feedback and documents, which only you see.",
                    elem_id="visitor-note")
    if not settings.persistent:
        gr.Markdown(f"⚠️ {NOT_PERSISTENT}", elem_id="not-persistent")
